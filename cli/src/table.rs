//! A tiny aligned-column text table, kubectl style: an upper-case header line, columns
//! separated by two spaces, no borders, no trailing whitespace. Widths count `char`s, which
//! is exact for the ASCII the engine returns (names, UUIDs, class and trait names).

/// How a column's cells are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left so that digits line up.
    Right,
}

/// A table under construction: headers, per-column alignment, and rows of cells.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

/// Gap between two columns.
const GAP: &str = "  ";

impl Table {
    /// A table with these column headers, every column left-aligned.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        let align = vec![Align::Left; headers.len()];
        Self {
            headers,
            align,
            rows: Vec::new(),
        }
    }

    /// Right-aligns the given columns (by index); out-of-range indices are ignored.
    #[must_use]
    pub fn right(mut self, columns: &[usize]) -> Self {
        for &c in columns {
            if let Some(a) = self.align.get_mut(c) {
                *a = Align::Right;
            }
        }
        self
    }

    /// Adds a row. Missing cells are blank; cells beyond the header count are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True if the table has no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Renders the header and every row, each line ending in `\n`.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        self.render_line(&mut out, &self.headers, &widths);
        for row in &self.rows {
            self.render_line(&mut out, row, &widths);
        }
        out
    }

    fn render_line(&self, out: &mut String, cells: &[String], widths: &[usize]) {
        let mut line = String::new();
        for (i, (cell, &w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            let pad = w - width(cell);
            match self.align[i] {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Renders `label: value` lines with the values aligned, for `show` commands. A value with
/// several lines has its continuation lines indented under the first.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| width(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let label = format!("{k}:");
        let mut lines = v.lines();
        let first = lines.next().unwrap_or("");
        out.push_str(format!("{label:<w$}{GAP}{first}").trim_end());
        out.push('\n');
        for more in lines {
            out.push_str(format!("{:w$}{GAP}{more}", "").trim_end());
            out.push('\n');
        }
    }
    out
}

fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_lines_trimmed() {
        let mut t = Table::new(["NAME", "VCPUS", "AZ"]).right(&[1]);
        t.row(["small", "1", "nova"]);
        t.row(["xlarge-gpu", "16", ""]);
        assert_eq!(
            t.render(),
            "NAME        VCPUS  AZ\n\
             small           1  nova\n\
             xlarge-gpu     16\n"
        );
    }

    #[test]
    fn header_wider_than_cells_sets_the_width() {
        let mut t = Table::new(["HOSTS_CONSIDERED", "X"]).right(&[0]);
        t.row(["7", "y"]);
        assert_eq!(t.render(), "HOSTS_CONSIDERED  X\n               7  y\n");
    }

    #[test]
    fn empty_table_renders_only_the_header() {
        let t = Table::new(["A", "B"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "A  B\n");
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut() {
        let mut t = Table::new(["A", "B"]);
        t.row(["1"]);
        t.row(["2", "3", "ignored"]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.render(), "A  B\n1\n2  3\n");
    }

    #[test]
    fn width_counts_chars_not_bytes() {
        let mut t = Table::new(["N", "X"]);
        t.row(["hôte", "1"]);
        t.row(["host-1", "2"]);
        assert_eq!(t.render(), "N       X\nhôte    1\nhost-1  2\n");
    }

    #[test]
    fn key_values_align_and_indent_continuations() {
        let out = key_values(&[
            ("uuid", "abc".to_string()),
            ("availability zone", String::new()),
            ("traits", "A\nB".to_string()),
        ]);
        assert_eq!(
            out,
            "uuid:               abc\n\
             availability zone:\n\
             traits:             A\n\
             \x20                   B\n"
        );
    }
}
