//! Nova's extra-spec comparison language, used by `capabilities:*` and aggregate extra
//! specs: `= 4` (numeric ≥), `== 4`, `!= 4`, `>= 4`, `<= 4`, `s== x`, `s!= x`, `s< x`,
//! `s<= x`, `s> x`, `s>= x`, `<in> sub`, `<all-in> a b`, `<or> a <or> b`, or a bare
//! string for equality.

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Numeric comparison.
    Num(NumCmp, f64),
    /// String comparison.
    Str(StrCmp, String),
    /// Substring.
    In(String),
    /// Every word appears in the value's word list.
    AllIn(Vec<String>),
    /// The value equals one of these.
    Or(Vec<String>),
    /// Plain equality.
    Eq(String),
}

/// Numeric comparisons.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumCmp {
    /// `=`: value ≥ operand (Nova's rule).
    AtLeast,
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `>=`.
    Ge,
    /// `<=`.
    Le,
}

/// String comparisons.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StrCmp {
    /// `s==`.
    Eq,
    /// `s!=`.
    Ne,
    /// `s<`.
    Lt,
    /// `s<=`.
    Le,
    /// `s>`.
    Gt,
    /// `s>=`.
    Ge,
}

/// Parses an expression; the error says what is wrong.
pub fn parse(expr: &str) -> Result<Op, String> {
    let e = expr.trim();
    let num = |rest: &str, cmp| {
        rest.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(|v| Op::Num(cmp, v))
            .ok_or_else(|| format!("{expr:?}: the operand must be a number"))
    };
    if let Some(rest) = e.strip_prefix("<or>") {
        let opts: Vec<String> = rest.split("<or>").map(|s| s.trim().to_string()).collect();
        if opts.iter().any(String::is_empty) {
            return Err(format!("{expr:?}: empty <or> alternative"));
        }
        return Ok(Op::Or(opts));
    }
    if let Some(rest) = e.strip_prefix("<all-in>") {
        let words: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        if words.is_empty() {
            return Err(format!("{expr:?}: <all-in> needs at least one word"));
        }
        return Ok(Op::AllIn(words));
    }
    if let Some(rest) = e.strip_prefix("<in>") {
        return Ok(Op::In(rest.trim().to_string()));
    }
    for (p, c) in [
        ("s==", StrCmp::Eq),
        ("s!=", StrCmp::Ne),
        ("s<=", StrCmp::Le),
        ("s>=", StrCmp::Ge),
        ("s<", StrCmp::Lt),
        ("s>", StrCmp::Gt),
    ] {
        if let Some(rest) = e.strip_prefix(p) {
            return Ok(Op::Str(c, rest.trim().to_string()));
        }
    }
    for (p, c) in [
        ("==", NumCmp::Eq),
        ("!=", NumCmp::Ne),
        (">=", NumCmp::Ge),
        ("<=", NumCmp::Le),
        ("=", NumCmp::AtLeast),
    ] {
        if let Some(rest) = e.strip_prefix(p) {
            return num(rest, c);
        }
    }
    Ok(Op::Eq(e.to_string()))
}

impl Op {
    /// Whether `value` satisfies the expression.
    pub fn matches(&self, value: &str) -> bool {
        let v = value.trim();
        match self {
            Op::Num(c, x) => match v.parse::<f64>() {
                Ok(n) => match c {
                    NumCmp::AtLeast | NumCmp::Ge => n >= *x,
                    NumCmp::Eq => n == *x,
                    NumCmp::Ne => n != *x,
                    NumCmp::Le => n <= *x,
                },
                Err(_) => false,
            },
            Op::Str(c, s) => match c {
                StrCmp::Eq => v == s,
                StrCmp::Ne => v != s,
                StrCmp::Lt => v < s.as_str(),
                StrCmp::Le => v <= s.as_str(),
                StrCmp::Gt => v > s.as_str(),
                StrCmp::Ge => v >= s.as_str(),
            },
            Op::In(s) => v.contains(s.as_str()),
            Op::AllIn(words) => {
                let have: Vec<&str> = v
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|w| !w.is_empty())
                    .collect();
                words.iter().all(|w| have.contains(&w.as_str()))
            }
            Op::Or(opts) => opts.iter().any(|o| o == v),
            Op::Eq(s) => v == s,
        }
    }
}

/// Packs `major[.minor[.patch]]` into one comparable integer (20 bits per part).
pub fn parse_version(s: &str) -> Option<u64> {
    let mut out = 0u64;
    let mut parts = 0;
    for p in s.trim().split('.') {
        let n: u64 = p.parse().ok()?;
        if n >= 1 << 20 || parts == 3 {
            return None;
        }
        out = (out << 20) | n;
        parts += 1;
    }
    (parts > 0).then_some(out << (20 * (3 - parts)))
}

/// Whether `host` (packed) satisfies `op version` (e.g. `>=`, `6.0`).
pub fn version_matches(host: u64, op: &str, want: u64) -> bool {
    match op {
        "<=" => host <= want,
        "<" => host < want,
        ">" => host > want,
        "==" | "=" => host == want,
        "!=" => host != want,
        _ => host >= want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("= 4", "8", true),
            ("= 4", "2", false),
            ("== 4", "4.0", true),
            ("!= 4", "4", false),
            (">= 4", "4", true),
            ("<= 4", "5", false),
            ("s== Intel", "Intel", true),
            ("s!= Intel", "AMD", true),
            ("s< b", "a", true),
            ("s>= b", "a", false),
            ("<in> avx", "sse avx2", true),
            ("<all-in> avx sse", "sse,avx", true),
            ("<all-in> avx sse", "sse", false),
            ("<or> kvm <or> qemu", "qemu", true),
            ("<or> kvm <or> qemu", "xen", false),
            ("true", "true", true),
            ("= 4", "not a number", false),
        ];
        for (expr, value, want) in cases {
            assert_eq!(
                parse(expr).unwrap().matches(value),
                *want,
                "{expr} vs {value}"
            );
        }
        assert!(parse("= four").is_err());
        assert!(parse("<or> a <or>").is_err());
        assert!(parse("<all-in>").is_err());
    }

    #[test]
    fn versions() {
        assert!(parse_version("6.0") < parse_version("6.0.1"));
        assert_eq!(parse_version("6"), parse_version("6.0.0"));
        assert!(parse_version("8.2.0") > parse_version("7.99.99"));
        assert_eq!(parse_version("1.2.3.4"), None);
        assert_eq!(parse_version("x"), None);
        assert_eq!(parse_version(""), None);
        let v = parse_version("8.0.0").unwrap();
        assert!(version_matches(v, ">=", parse_version("6.0").unwrap()));
        assert!(!version_matches(v, "<", parse_version("6.0").unwrap()));
    }
}
