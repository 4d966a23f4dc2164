//! Libvirt domain XML from an [`InstanceSpec`], and the validation both drivers apply.
//!
//! Every string from outside (names, image and flavor names, metadata) is validated, then
//! escaped on the way out: `& < > " '` become entities and tab, newline and carriage return
//! become character references, so text survives a parse unchanged, in elements and in
//! attributes alike. Characters XML 1.0 cannot carry at all (most C0 controls, U+FFFE, U+FFFF)
//! are refused with [`HypervisorError::InvalidSpec`]: no escaping makes them legal. Domain
//! and snapshot names also refuse control characters and `/`, as libvirt does.
//!
//! The domain is diskless and has no NICs for now (disks and networks arrive with image
//! handling). The instance's flavor, image and metadata ride in `<metadata>` under the
//! [`BERTH_XMLNS`] namespace, as Nova does with its own, so `virsh dumpxml` shows operators
//! what Berth put there.
//!
//! For libvirt's test driver the domain is the bare minimum it accepts. For QEMU
//! ([`DomainType::Kvm`] or [`DomainType::Qemu`]) [`domain_xml_for`] also writes the host's
//! architecture into `<os><type arch=…>` (so libvirt picks the matching emulator and machine
//! type), `<features><acpi/><apic/></features>` on x86 (without ACPI a guest cannot be asked
//! to shut down or reboot: `virsh shutdown` would only ever time out), and a serial console
//! on a pty (`virsh console`), which needs no file on the host. Real QEMU accepts and boots
//! this diskless guest: with nothing to boot, SeaBIOS loops looking for a boot device and the
//! domain stays Running, which is all the lifecycle needs.

use std::fmt::Write as _;

use crate::hypervisor::{HypervisorError, InstanceSpec, Result};

/// Namespace of Berth's element inside the domain's `<metadata>`.
pub const BERTH_XMLNS: &str = "urn:berth:instance:1";

/// Longest domain, flavor, image or snapshot name and metadata key, in characters (Nova's
/// display-name and metadata-key limit).
pub const MAX_NAME_CHARS: usize = 255;

/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 64 * 1024;

/// Most metadata entries on one instance (Nova's default metadata-items quota).
pub const MAX_METADATA_ITEMS: usize = 128;

/// The libvirt domain `type` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// libvirt's in-process test driver (`test:///…` URIs).
    Test,
    /// Hardware-accelerated QEMU.
    Kvm,
    /// QEMU without KVM (emulation; slow but works without `/dev/kvm`).
    Qemu,
}

impl DomainType {
    /// The type for a connection URI: `Test` for `test` and `test+transport` schemes,
    /// otherwise `Kvm` when the host has KVM, else `Qemu`.
    pub fn for_uri(uri: &str, kvm_available: bool) -> Self {
        let scheme = uri.split(':').next().unwrap_or_default();
        let driver = scheme.split('+').next().unwrap_or_default();
        if driver.eq_ignore_ascii_case("test") {
            Self::Test
        } else if kvm_available {
            Self::Kvm
        } else {
            Self::Qemu
        }
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Kvm => "kvm",
            Self::Qemu => "qemu",
        }
    }
}

/// Checks `spec` against the rules above: non-empty names without control characters, sizes
/// at least 1, every string within its limit and expressible in XML.
///
/// # Errors
/// `InvalidSpec` naming the first field that fails.
pub fn validate_spec(spec: &InstanceSpec) -> Result<()> {
    validate_domain_name("name", &spec.name)?;
    if spec.vcpus == 0 {
        return Err(invalid("vcpus must be at least 1"));
    }
    if spec.memory_mb == 0 {
        return Err(invalid("memory_mb must be at least 1"));
    }
    memory_kib(spec.memory_mb)?;
    validate_label("image_id", &spec.image_id)?;
    validate_label("image_name", &spec.image_name)?;
    validate_label("flavor_name", &spec.flavor_name)?;
    if spec.metadata.len() > MAX_METADATA_ITEMS {
        return Err(invalid(format!(
            "{} metadata items, at most {MAX_METADATA_ITEMS}",
            spec.metadata.len()
        )));
    }
    for (key, value) in &spec.metadata {
        validate_name("metadata key", key)?;
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(invalid(format!(
                "metadata value of {key:?} is {} bytes, at most {MAX_METADATA_VALUE_BYTES}",
                value.len()
            )));
        }
        if let Some(c) = value.chars().find(|&c| !is_xml_char(c)) {
            return Err(invalid(format!(
                "metadata value of {key:?} holds {c:?}, which XML cannot carry"
            )));
        }
    }
    Ok(())
}

/// Checks a name that must be non-empty, at most [`MAX_NAME_CHARS`] characters and free of
/// control characters (domain, snapshot and metadata-key names).
///
/// # Errors
/// `InvalidSpec` naming `field`.
pub fn validate_name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    validate_label(field, value)
}

/// [`validate_name`], and no `/`: libvirt refuses it in domain and snapshot names (they
/// become file names on real hosts).
///
/// # Errors
/// `InvalidSpec` naming `field`.
pub fn validate_domain_name(field: &str, value: &str) -> Result<()> {
    validate_name(field, value)?;
    if value.contains('/') {
        return Err(invalid(format!("{field} {value:?} cannot contain '/'")));
    }
    Ok(())
}

/// Like [`validate_name`] but the value may be empty (image and flavor labels).
fn validate_label(field: &str, value: &str) -> Result<()> {
    let chars = value.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "{field} has {chars} characters, at most {MAX_NAME_CHARS}"
        )));
    }
    if let Some(c) = value.chars().find(|&c| c.is_control() || !is_xml_char(c)) {
        return Err(invalid(format!(
            "{field} holds the control character {c:?}"
        )));
    }
    Ok(())
}

/// XML 1.0's `Char` production (Rust strings cannot hold surrogates, so those need no test).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

fn invalid(msg: impl Into<String>) -> HypervisorError {
    HypervisorError::InvalidSpec(msg.into())
}

fn memory_kib(memory_mb: u64) -> Result<u64> {
    memory_mb
        .checked_mul(1024)
        .ok_or_else(|| invalid(format!("memory_mb {memory_mb} overflows KiB")))
}

/// Appends `text` to `out`, escaped for element content and attribute values alike.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Parsers normalise raw CR and, in attributes, tab and LF: references keep them.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// `text`, escaped (see [`escape_into`]).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

/// The domain XML for `spec`, after [`validate_spec`], with no architecture given (libvirt's
/// default). Same as [`domain_xml_for`] with `arch = None`.
///
/// # Errors
/// `InvalidSpec` when the spec fails validation.
pub fn domain_xml(spec: &InstanceSpec, domain_type: DomainType) -> Result<String> {
    domain_xml_for(spec, domain_type, None)
}

/// Whether `arch` (libvirt's name) is 32- or 64-bit x86, where ACPI and the APIC are
/// domain features.
fn is_x86(arch: &str) -> bool {
    matches!(arch, "x86_64" | "i686" | "i386")
}

/// The domain XML for `spec` on a host of architecture `arch` (libvirt's name, e.g. `x86_64`;
/// the driver reads it from the connection), after [`validate_spec`].
///
/// For [`DomainType::Test`] the guest section is the minimal one the test driver accepts;
/// `arch` is written when given. For QEMU types see the module docs: `arch`, ACPI and APIC on
/// x86, and a pty serial console.
///
/// # Errors
/// `InvalidSpec` when the spec fails validation or `arch` is empty or not a plain name.
pub fn domain_xml_for(
    spec: &InstanceSpec,
    domain_type: DomainType,
    arch: Option<&str>,
) -> Result<String> {
    validate_spec(spec)?;
    if let Some(a) = arch
        && (a.is_empty()
            || !a
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(invalid(format!(
            "arch {a:?} is not a libvirt architecture name"
        )));
    }
    let qemu = domain_type != DomainType::Test;
    let kib = memory_kib(spec.memory_mb)?;
    let mut x = String::with_capacity(1024);
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(x, "<domain type=\"{}\">", domain_type.as_str());
    x.push_str("  <name>");
    escape_into(&mut x, &spec.name);
    x.push_str("</name>\n");
    let _ = writeln!(x, "  <uuid>{}</uuid>", spec.uuid.hyphenated());
    x.push_str("  <metadata>\n");
    let _ = writeln!(x, "    <berth:instance xmlns:berth=\"{BERTH_XMLNS}\">");
    x.push_str("      <berth:flavor name=\"");
    escape_into(&mut x, &spec.flavor_name);
    let _ = writeln!(
        x,
        "\" vcpus=\"{}\" memory_mb=\"{}\" disk_gb=\"{}\"/>",
        spec.vcpus, spec.memory_mb, spec.disk_gb
    );
    x.push_str("      <berth:image id=\"");
    escape_into(&mut x, &spec.image_id);
    x.push_str("\" name=\"");
    escape_into(&mut x, &spec.image_name);
    x.push_str("\"/>\n");
    for (key, value) in &spec.metadata {
        x.push_str("      <berth:property key=\"");
        escape_into(&mut x, key);
        x.push_str("\">");
        escape_into(&mut x, value);
        x.push_str("</berth:property>\n");
    }
    x.push_str("    </berth:instance>\n  </metadata>\n");
    let _ = writeln!(x, "  <memory unit=\"KiB\">{kib}</memory>");
    let _ = writeln!(x, "  <currentMemory unit=\"KiB\">{kib}</currentMemory>");
    let _ = writeln!(x, "  <vcpu placement=\"static\">{}</vcpu>", spec.vcpus);
    match arch {
        Some(a) => {
            let _ = writeln!(x, "  <os>\n    <type arch=\"{a}\">hvm</type>");
        }
        None => x.push_str("  <os>\n    <type>hvm</type>\n"),
    }
    x.push_str("    <boot dev=\"hd\"/>\n  </os>\n");
    if qemu && arch.is_some_and(is_x86) {
        x.push_str("  <features>\n    <acpi/>\n    <apic/>\n  </features>\n");
    }
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n");
    x.push_str("  <on_reboot>restart</on_reboot>\n");
    x.push_str("  <on_crash>destroy</on_crash>\n");
    if qemu {
        x.push_str("  <devices>\n");
        x.push_str("    <serial type=\"pty\">\n      <target port=\"0\"/>\n    </serial>\n");
        x.push_str(
            "    <console type=\"pty\">\n      <target type=\"serial\" port=\"0\"/>\n    </console>\n",
        );
        x.push_str("  </devices>\n");
    } else {
        x.push_str("  <devices/>\n");
    }
    x.push_str("</domain>\n");
    Ok(x)
}

/// The `<domainsnapshot>` XML for a snapshot called `name`.
///
/// # Errors
/// `InvalidSpec` when `name` fails [`validate_domain_name`].
pub fn snapshot_xml(name: &str) -> Result<String> {
    validate_domain_name("snapshot name", name)?;
    let mut x = String::from("<domainsnapshot>\n  <name>");
    escape_into(&mut x, name);
    x.push_str("</name>\n  <description>taken by berth-node</description>\n</domainsnapshot>\n");
    Ok(x)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            uuid: Uuid::parse_str("6a1f6b9e-3c1d-4b8e-9f0a-1b2c3d4e5f60").unwrap(),
            name: "web-1".into(),
            vcpus: 2,
            memory_mb: 2048,
            disk_gb: 20,
            image_id: "img-123".into(),
            image_name: "debian-12".into(),
            flavor_name: "m1.small".into(),
            metadata: BTreeMap::from([("role".into(), "web".into())]),
        }
    }

    /// What a parse of the generated XML says, to compare with the spec.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        domain_type: String,
        name: String,
        uuid: String,
        memory_kib: u64,
        vcpus: u32,
        flavor: String,
        image_id: String,
        image_name: String,
        metadata: BTreeMap<String, String>,
        element_names: Vec<String>,
    }

    fn parse(xml: &str) -> Parsed {
        let doc = roxmltree::Document::parse(xml).expect("generated XML must be well-formed");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "domain");
        let child = |name: &str| {
            let found: Vec<_> = root
                .children()
                .filter(|n| n.is_element() && n.tag_name().name() == name)
                .collect();
            assert_eq!(found.len(), 1, "exactly one <{name}> under <domain>");
            found[0]
        };
        let instance = child("metadata")
            .children()
            .find(|n| n.is_element())
            .expect("berth:instance");
        assert_eq!(instance.tag_name().namespace(), Some(BERTH_XMLNS));
        let berth = |name: &str| {
            instance
                .children()
                .find(|n| {
                    n.tag_name().name() == name && n.tag_name().namespace() == Some(BERTH_XMLNS)
                })
                .unwrap_or_else(|| panic!("berth:{name}"))
        };
        let metadata = instance
            .children()
            .filter(|n| n.tag_name().name() == "property")
            .map(|n| {
                (
                    n.attribute("key").unwrap().to_string(),
                    n.text().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Parsed {
            domain_type: root.attribute("type").unwrap().into(),
            name: child("name").text().unwrap_or_default().into(),
            uuid: child("uuid").text().unwrap().into(),
            memory_kib: child("memory").text().unwrap().parse().unwrap(),
            vcpus: child("vcpu").text().unwrap().parse().unwrap(),
            flavor: berth("flavor").attribute("name").unwrap().into(),
            image_id: berth("image").attribute("id").unwrap().into(),
            image_name: berth("image").attribute("name").unwrap().into(),
            metadata,
            element_names: doc
                .descendants()
                .filter(|n| n.is_element())
                .map(|n| n.tag_name().name().to_string())
                .collect(),
        }
    }

    fn assert_round_trips(spec: &InstanceSpec) {
        assert_round_trips_as(spec, DomainType::Test, None);
        assert_round_trips_as(spec, DomainType::Kvm, Some("x86_64"));
    }

    fn assert_round_trips_as(spec: &InstanceSpec, t: DomainType, arch: Option<&str>) {
        let xml = domain_xml_for(spec, t, arch).unwrap();
        let p = parse(&xml);
        assert_eq!(p.name, spec.name);
        assert_eq!(p.uuid, spec.uuid.to_string());
        assert_eq!(p.memory_kib, spec.memory_mb * 1024);
        assert_eq!(p.vcpus, spec.vcpus);
        assert_eq!(p.flavor, spec.flavor_name);
        assert_eq!(p.image_id, spec.image_id);
        assert_eq!(p.image_name, spec.image_name);
        assert_eq!(p.metadata, spec.metadata);
        // No hostile string may have opened an element of its own.
        let allowed = [
            "domain",
            "name",
            "uuid",
            "metadata",
            "instance",
            "flavor",
            "image",
            "property",
            "memory",
            "currentMemory",
            "vcpu",
            "os",
            "type",
            "boot",
            "on_poweroff",
            "on_reboot",
            "on_crash",
            "devices",
            "features",
            "acpi",
            "apic",
            "serial",
            "console",
            "target",
        ];
        for e in &p.element_names {
            assert!(
                allowed.contains(&e.as_str()),
                "unexpected element <{e}> in\n{xml}"
            );
        }
    }

    #[test]
    fn plain_spec_has_the_expected_shape() {
        let s = spec();
        let xml = domain_xml(&s, DomainType::Test).unwrap();
        let p = parse(&xml);
        assert_eq!(p.domain_type, "test");
        assert_eq!(p.memory_kib, 2 * 1024 * 1024);
        assert!(xml.contains("<type>hvm</type>"));
        assert!(xml.contains("<vcpu placement=\"static\">2</vcpu>"));
        assert_round_trips(&s);
    }

    #[test]
    fn domain_type_follows_the_uri() {
        assert_eq!(
            DomainType::for_uri("test:///default", true),
            DomainType::Test
        );
        assert_eq!(
            DomainType::for_uri("test+unix:///default", true),
            DomainType::Test
        );
        assert_eq!(
            DomainType::for_uri("TEST:///tmp/node.xml", false),
            DomainType::Test
        );
        assert_eq!(DomainType::for_uri("qemu:///system", true), DomainType::Kvm);
        assert_eq!(
            DomainType::for_uri("qemu+ssh://h/system", false),
            DomainType::Qemu
        );
        // "testing" is not the test driver.
        assert_eq!(DomainType::for_uri("testing:///x", false), DomainType::Qemu);
        let xml = domain_xml(&spec(), DomainType::Kvm).unwrap();
        assert_eq!(parse(&xml).domain_type, "kvm");
    }

    #[test]
    fn qemu_domains_name_the_arch_and_have_acpi_and_a_console() {
        let s = spec();
        for t in [DomainType::Kvm, DomainType::Qemu] {
            let xml = domain_xml_for(&s, t, Some("x86_64")).unwrap();
            let doc = roxmltree::Document::parse(&xml).unwrap();
            let ty = doc.descendants().find(|n| n.has_tag_name("type")).unwrap();
            assert_eq!(ty.attribute("arch"), Some("x86_64"));
            assert_eq!(ty.text(), Some("hvm"));
            for e in ["acpi", "apic", "serial", "console"] {
                assert!(
                    doc.descendants().any(|n| n.has_tag_name(e)),
                    "<{e}> in\n{xml}"
                );
            }
            // Nothing that needs a file on the host: no disk, interface or graphics.
            for e in ["disk", "interface", "graphics", "filesystem"] {
                assert!(
                    !doc.descendants().any(|n| n.has_tag_name(e)),
                    "<{e}> in\n{xml}"
                );
            }
            assert_eq!(parse(&xml).domain_type, t.as_str());
        }
        // ACPI and APIC are x86 features only.
        let arm = domain_xml_for(&s, DomainType::Kvm, Some("aarch64")).unwrap();
        assert!(arm.contains("<type arch=\"aarch64\">hvm</type>"));
        assert!(!arm.contains("<acpi/>"));
        // The test driver's domain stays minimal.
        let test = domain_xml(&s, DomainType::Test).unwrap();
        assert!(test.contains("<type>hvm</type>"));
        assert!(test.contains("<devices/>"));
        assert!(!test.contains("<features>"));
        for bad in ["", "x86 64", "x\"/><evil/>"] {
            assert!(matches!(
                domain_xml_for(&s, DomainType::Kvm, Some(bad)),
                Err(HypervisorError::InvalidSpec(_))
            ));
        }
    }

    #[test]
    fn hostile_names_are_escaped_not_interpreted() {
        for hostile in [
            "<name><evil>",
            "<evil><name>&",
            "\"quoted\" and 'single'",
            "a&b&amp;c",
            "]]><![CDATA[x",
            "<!-- comment -->",
            "<?xml version=\"1.0\"?>",
            "&lt;already-escaped&gt;",
            "ünïcödé ✓ 名前 🚀",
        ] {
            let mut s = spec();
            s.name = hostile.into();
            s.flavor_name = hostile.into();
            s.image_id = hostile.into();
            s.image_name = hostile.into();
            s.metadata = BTreeMap::from([(hostile.to_string(), hostile.to_string())]);
            assert_round_trips(&s);
        }
    }

    #[test]
    fn closing_tags_are_refused_as_names_but_carried_everywhere_else() {
        let hostile = "</name><evil>";
        let mut s = spec();
        s.name = hostile.into();
        let err = domain_xml(&s, DomainType::Test).unwrap_err();
        assert!(
            matches!(&err, HypervisorError::InvalidSpec(m) if m.contains("'/'")),
            "{err}"
        );
        s.name = "ok".into();
        s.flavor_name = hostile.into();
        s.image_id = "</berth:image><evil/>".into();
        s.image_name = hostile.into();
        s.metadata = BTreeMap::from([(
            hostile.to_string(),
            "</berth:property></berth:instance></metadata><evil/>".into(),
        )]);
        assert_round_trips(&s);
        assert!(snapshot_xml("a/b").is_err());
    }

    #[test]
    fn whitespace_in_metadata_values_survives_attributes_and_text() {
        let mut s = spec();
        s.metadata = BTreeMap::from([
            ("multi".into(), "line one\nline two\r\n\tindented".into()),
            ("edges".into(), "  spaces  ".into()),
        ]);
        assert_round_trips(&s);
    }

    #[test]
    fn control_characters_are_rejected() {
        for (field, bad) in [
            ("name", "a\u{0}b"),
            ("name", "a\nb"),
            ("name", "a\tb"),
            ("name", "bell\u{7}"),
            ("name", "del\u{7f}"),
            ("name", "c1\u{85}"),
            ("name", "nonchar\u{FFFE}"),
            ("flavor_name", "esc\u{1b}[31m"),
            ("image_name", "x\u{0}"),
            ("metadata key", "k\u{1}"),
            ("metadata value", "v\u{0}"),
            ("metadata value", "v\u{FFFF}"),
        ] {
            let mut s = spec();
            match field {
                "name" => s.name = bad.into(),
                "flavor_name" => s.flavor_name = bad.into(),
                "image_name" => s.image_name = bad.into(),
                "metadata key" => s.metadata = BTreeMap::from([(bad.into(), "v".into())]),
                _ => s.metadata = BTreeMap::from([("k".into(), bad.into())]),
            }
            let err = domain_xml(&s, DomainType::Test).unwrap_err();
            assert!(
                matches!(&err, HypervisorError::InvalidSpec(m) if m.contains(field)),
                "{field} {bad:?}: {err}"
            );
        }
    }

    #[test]
    fn empty_and_zero_fields_are_rejected() {
        let mut s = spec();
        s.name.clear();
        assert!(matches!(
            validate_spec(&s),
            Err(HypervisorError::InvalidSpec(_))
        ));
        let mut s = spec();
        s.vcpus = 0;
        assert!(matches!(
            validate_spec(&s),
            Err(HypervisorError::InvalidSpec(_))
        ));
        let mut s = spec();
        s.memory_mb = 0;
        assert!(matches!(
            validate_spec(&s),
            Err(HypervisorError::InvalidSpec(_))
        ));
        let mut s = spec();
        s.memory_mb = u64::MAX / 512;
        assert!(matches!(
            validate_spec(&s),
            Err(HypervisorError::InvalidSpec(_))
        ));
        let mut s = spec();
        s.metadata = BTreeMap::from([(String::new(), "v".into())]);
        assert!(matches!(
            validate_spec(&s),
            Err(HypervisorError::InvalidSpec(_))
        ));
        // Empty image and flavor labels are fine (an image may have no name).
        let mut s = spec();
        s.image_name.clear();
        s.flavor_name.clear();
        assert_round_trips(&s);
    }

    #[test]
    fn long_strings_stay_well_formed_up_to_the_limits_and_are_refused_beyond() {
        let mut s = spec();
        s.name = "<&>\"'".repeat(MAX_NAME_CHARS / 5);
        s.flavor_name = "</x>".repeat(MAX_NAME_CHARS / 4);
        assert_eq!(s.name.chars().count(), MAX_NAME_CHARS);
        s.metadata = BTreeMap::from([(
            "big".to_string(),
            "</berth:property><x>&".repeat(MAX_METADATA_VALUE_BYTES / 21),
        )]);
        assert_round_trips(&s);

        let mut too_long = spec();
        too_long.name = "n".repeat(MAX_NAME_CHARS + 1);
        assert!(
            matches!(validate_spec(&too_long), Err(HypervisorError::InvalidSpec(m)) if m.contains("name"))
        );
        let mut too_big = spec();
        too_big.metadata = BTreeMap::from([("k".into(), "v".repeat(MAX_METADATA_VALUE_BYTES + 1))]);
        assert!(validate_spec(&too_big).is_err());
        let mut too_many = spec();
        too_many.metadata = (0..=MAX_METADATA_ITEMS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(validate_spec(&too_many).is_err());
        too_many.metadata.pop_first();
        assert_round_trips(&too_many);
    }

    #[test]
    fn snapshot_xml_escapes_and_validates() {
        let xml = snapshot_xml("<name><evil> & 'q\"").unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let name = doc.descendants().find(|n| n.has_tag_name("name")).unwrap();
        assert_eq!(name.text(), Some("<name><evil> & 'q\""));
        assert!(!doc.descendants().any(|n| n.has_tag_name("evil")));
        assert!(snapshot_xml("").is_err());
        assert!(snapshot_xml("a\nb").is_err());
    }

    #[test]
    fn escape_covers_every_special_character() {
        assert_eq!(
            escape("&<>\"'\t\n\r"),
            "&amp;&lt;&gt;&quot;&apos;&#9;&#10;&#13;"
        );
        assert_eq!(escape("plain"), "plain");
    }

    proptest! {
        /// Any spec that validates round-trips exactly; any that does not is refused, never
        /// emitted.
        #[test]
        fn any_valid_spec_round_trips(
            name in "\\PC{1,40}",
            flavor in "\\PC{0,40}",
            key in "\\PC{1,20}",
            value in "[\\PC\t\n\r]{0,80}",
        ) {
            let mut s = spec();
            s.name = name;
            s.flavor_name = flavor;
            s.metadata = BTreeMap::from([(key, value)]);
            match domain_xml(&s, DomainType::Test) {
                Ok(_) => assert_round_trips(&s),
                Err(HypervisorError::InvalidSpec(_)) => {
                    prop_assert!(validate_spec(&s).is_err());
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        /// Arbitrary strings, controls included: the output either parses back to the input
        /// or the input was refused.
        #[test]
        fn arbitrary_names_never_produce_broken_xml(name in any::<String>()) {
            let mut s = spec();
            s.name = name;
            if domain_xml(&s, DomainType::Test).is_ok() {
                assert_round_trips(&s);
            }
        }
    }
}
