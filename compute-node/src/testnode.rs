//! Custom libvirt test-driver node files: one simulated host of a chosen size.
//!
//! `test:///default` is a fixed host (16 CPUs, 3 GiB, `i686`) shared by every connection in a
//! process. A node file gives each connection its own fresh host of any size, which is what a
//! load harness running many `berth-node`s on one machine wants. The test driver reads
//! (`src/test/test_driver.c`, `testParseNodeInfo`):
//!
//! ```xml
//! <node>
//!   <cpu>
//!     <nodes>1</nodes> <sockets>1</sockets> <cores>N</cores> <threads>1</threads>
//!     <active>N</active> <mhz>…</mhz> <model>x86_64</model>
//!   </cpu>
//!   <memory>KiB</memory>
//!   <!-- optionally <domain>, <network>, <pool>… definitions -->
//! </node>
//! ```
//!
//! The driver computes CPUs as `nodes × sockets × cores × threads` and lowers it to `active`
//! when that is smaller, so the topology is written as one socket of `N` cores: setting only
//! `active` would be capped at the default topology's 16. `model` becomes the node's reported
//! architecture (virNodeInfo's model is 32 bytes, hence the length limit). Disk is not part of
//! libvirt's node info: it is configured beside the file.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// Longest `model` the test driver keeps (virNodeInfo's `model` is `char[32]`).
const MAX_MODEL_BYTES: usize = 31;

/// A simulated host for the libvirt test driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestNode {
    /// Host CPUs (at least 1).
    pub vcpus: u32,
    /// Host memory in MiB (at least 1).
    pub memory_mb: u64,
    /// Reported architecture, e.g. `x86_64`: ASCII letters, digits, `_` and `-`.
    pub arch: String,
    /// Reported CPU frequency.
    pub mhz: u32,
}

impl TestNode {
    /// An `x86_64` node of `vcpus` CPUs and `memory_mb` MiB at 2 GHz.
    pub fn new(vcpus: u32, memory_mb: u64) -> Self {
        Self {
            vcpus,
            memory_mb,
            arch: "x86_64".into(),
            mhz: 2000,
        }
    }

    /// The node file's XML.
    ///
    /// # Errors
    /// `InvalidInput` for zero sizes, a memory size whose KiB overflow, or an unusable arch.
    pub fn to_xml(&self) -> io::Result<String> {
        if self.vcpus == 0 || self.memory_mb == 0 {
            return Err(bad_input("test node needs at least 1 vCPU and 1 MiB"));
        }
        let kib = self
            .memory_mb
            .checked_mul(1024)
            .ok_or_else(|| bad_input("test node memory overflows KiB"))?;
        let arch_ok = !self.arch.is_empty()
            && self.arch.len() <= MAX_MODEL_BYTES
            && self
                .arch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !arch_ok {
            return Err(bad_input(format!(
                "test node arch {:?}: 1 to {MAX_MODEL_BYTES} ASCII letters, digits, '_' or '-'",
                self.arch
            )));
        }
        let mut x = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            x,
            "<node>\n\
             \x20 <!-- written by berth-node: one simulated host for libvirt's test driver -->\n\
             \x20 <cpu>\n\
             \x20   <nodes>1</nodes>\n\
             \x20   <sockets>1</sockets>\n\
             \x20   <cores>{v}</cores>\n\
             \x20   <threads>1</threads>\n\
             \x20   <active>{v}</active>\n\
             \x20   <mhz>{mhz}</mhz>\n\
             \x20   <model>{arch}</model>\n\
             \x20 </cpu>\n\
             \x20 <memory>{kib}</memory>\n\
             </node>\n",
            v = self.vcpus,
            mhz = self.mhz,
            arch = self.arch,
        );
        Ok(x)
    }

    /// Writes the node file to `path` (atomically: a temporary file beside it, then a rename)
    /// and returns the `test:///…` URI that opens it.
    ///
    /// # Errors
    /// As [`to_xml`](Self::to_xml), and any I/O error.
    pub fn write(&self, path: &Path) -> io::Result<String> {
        let xml = self.to_xml()?;
        let path = absolute(path)?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, xml)?;
        std::fs::rename(&tmp, &path)?;
        uri_for(&path)
    }
}

fn bad_input(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn absolute(path: &Path) -> io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

/// The test-driver URI for the node file at `path`: `test://` followed by the absolute path,
/// percent-encoding every byte outside `A-Z a-z 0-9 / - . _ ~` (libvirt parses it as a URI).
///
/// # Errors
/// `InvalidInput` when `path` is relative.
pub fn uri_for(path: &Path) -> io::Result<String> {
    if !path.is_absolute() {
        return Err(bad_input(format!(
            "test node path {} must be absolute",
            path.display()
        )));
    }
    let mut uri = String::from("test://");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            uri.push(char::from(b));
        } else {
            let _ = write!(uri, "%{b:02X}");
        }
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(doc: &roxmltree::Document<'_>, path: &[&str]) -> String {
        let mut node = doc.root_element();
        for step in path {
            node = node
                .children()
                .find(|n| n.has_tag_name(*step))
                .unwrap_or_else(|| panic!("missing <{step}>"));
        }
        node.text().unwrap().to_string()
    }

    #[test]
    fn xml_shapes_one_socket_of_n_cores() {
        let xml = TestNode::new(48, 65536).to_xml().unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "node");
        // CPUs = nodes × sockets × cores × threads, capped by active: all must agree on 48.
        let product: u64 = ["nodes", "sockets", "cores", "threads"]
            .iter()
            .map(|t| text_of(&doc, &["cpu", t]).parse::<u64>().unwrap())
            .product();
        assert_eq!(product, 48);
        assert_eq!(text_of(&doc, &["cpu", "active"]), "48");
        assert_eq!(text_of(&doc, &["cpu", "model"]), "x86_64");
        assert_eq!(text_of(&doc, &["memory"]), (65536u64 * 1024).to_string());
    }

    #[test]
    fn bad_nodes_are_refused() {
        assert!(TestNode::new(0, 1024).to_xml().is_err());
        assert!(TestNode::new(1, 0).to_xml().is_err());
        assert!(TestNode::new(1, u64::MAX).to_xml().is_err());
        for arch in ["", "x86</model>", &"a".repeat(32)] {
            let mut n = TestNode::new(1, 1);
            n.arch = arch.into();
            assert!(n.to_xml().is_err(), "{arch:?}");
        }
    }

    #[test]
    fn uri_is_absolute_and_percent_encoded() {
        assert_eq!(
            uri_for(Path::new("/tmp/node.xml")).unwrap(),
            "test:///tmp/node.xml"
        );
        assert_eq!(
            uri_for(Path::new("/tmp/my node#1?.xml")).unwrap(),
            "test:///tmp/my%20node%231%3F.xml"
        );
        assert!(uri_for(Path::new("relative.xml")).is_err());
    }

    #[test]
    fn write_creates_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.xml");
        let uri = TestNode::new(4, 8192).write(&path).unwrap();
        assert_eq!(uri, uri_for(&path).unwrap());
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written, TestNode::new(4, 8192).to_xml().unwrap());
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "temporary file left behind");
    }
}
