//! The `domain_xml` harness: an arbitrary [`InstanceSpec`] (names, image and flavor labels,
//! metadata, sizes) and architecture through `domain_xml_for`, `snapshot_xml` and `escape`.
//!
//! What fails the run:
//! - a panic anywhere in them;
//! - `domain_xml_for` accepting a spec that breaks the documented rules (names 1 to 255
//!   characters without control characters, a domain name without `/`, sizes at least 1,
//!   memory expressible in KiB, at most 128 metadata entries, values at most 64 KiB of
//!   characters XML can carry, an architecture of letters, digits, `_` and `-`), or
//!   refusing one that keeps them;
//! - accepted output that is not well-formed XML, or that parses back to anything but the
//!   spec: the name, uuid, sizes, flavor and image labels and every metadata entry exactly,
//!   no element a string could have smuggled in, the architecture where it belongs;
//! - `escape` output that does not round-trip through an element and an attribute.
//!
//! Input layout: 4 bytes vcpus, 8 bytes memory_mb, 8 bytes disk_gb (little-endian), one
//! byte of flags (domain type, architecture choice), then UTF-8 (lossy) text split at
//! U+0001 into name, image id, image name, flavor name, architecture, then metadata entries
//! `key U+0002 value`. Both separators are control characters, which no valid field holds.

use std::collections::BTreeMap;

use berth_node::InstanceSpec;
use berth_node::domain_xml::{
    BERTH_XMLNS, DomainType, MAX_METADATA_ITEMS, MAX_METADATA_VALUE_BYTES, MAX_NAME_CHARS,
    domain_xml_for, escape, snapshot_xml, validate_spec,
};
use uuid::Uuid;

const HEADER: usize = 21;

/// An input decoded: the spec, the domain type and the architecture.
#[derive(Debug, Clone)]
pub struct Input {
    /// The instance.
    pub spec: InstanceSpec,
    /// Test, Kvm or Qemu.
    pub domain_type: DomainType,
    /// The host architecture given to `domain_xml_for`.
    pub arch: Option<String>,
}

/// Decodes an input (see the module doc); short inputs are zero-padded.
pub fn decode(data: &[u8]) -> Input {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let vcpus = u32::from_le_bytes(std::array::from_fn(byte));
    let memory_mb = u64::from_le_bytes(std::array::from_fn(|i| byte(4 + i)));
    let disk_gb = u64::from_le_bytes(std::array::from_fn(|i| byte(12 + i)));
    let flags = byte(20);
    let text = String::from_utf8_lossy(data.get(HEADER..).unwrap_or_default());
    let mut parts = text.split('\u{1}');
    let mut next = || parts.next().unwrap_or_default().to_string();
    let (name, image_id, image_name, flavor_name, arch_text) =
        (next(), next(), next(), next(), next());
    let metadata: BTreeMap<String, String> = parts
        .map(|kv| match kv.split_once('\u{2}') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    let domain_type = match flags & 3 {
        0 => DomainType::Test,
        1 => DomainType::Kvm,
        _ => DomainType::Qemu,
    };
    let arch = match (flags >> 2) & 3 {
        0 => None,
        1 => Some("x86_64".to_string()),
        2 => Some("aarch64".to_string()),
        _ => Some(arch_text),
    };
    // The uuid is not fuzzed: the spec type cannot hold anything but a valid one.
    let uuid = Uuid::from_u64_pair(memory_mb ^ 0x5eed, disk_gb);
    Input {
        spec: InstanceSpec {
            uuid,
            name,
            vcpus,
            memory_mb,
            disk_gb,
            image_id,
            image_name,
            flavor_name,
            metadata,
        },
        domain_type,
        arch,
    }
}

/// Encodes an input the way [`decode`] reads it (for the seed corpus).
pub fn encode(i: &Input) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(i.spec.vcpus.to_le_bytes());
    v.extend(i.spec.memory_mb.to_le_bytes());
    v.extend(i.spec.disk_gb.to_le_bytes());
    let ty = match i.domain_type {
        DomainType::Test => 0,
        DomainType::Kvm => 1,
        DomainType::Qemu => 2,
    };
    let arch = match i.arch.as_deref() {
        None => 0,
        Some("x86_64") => 1,
        Some("aarch64") => 2,
        Some(_) => 3,
    };
    v.push(ty | (arch << 2));
    let s = &i.spec;
    let mut text = [
        s.name.as_str(),
        &s.image_id,
        &s.image_name,
        &s.flavor_name,
        i.arch.as_deref().unwrap_or_default(),
    ]
    .join("\u{1}");
    for (k, val) in &s.metadata {
        text.push('\u{1}');
        text.push_str(k);
        text.push('\u{2}');
        text.push_str(val);
    }
    v.extend(text.as_bytes());
    v
}

fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A label: at most 255 characters, none a control character or outside XML.
fn label_ok(s: &str) -> bool {
    s.chars().count() <= MAX_NAME_CHARS && s.chars().all(|c| !c.is_control() && xml_char(c))
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && label_ok(s)
}

/// The documented rules, written out independently of the code under test.
fn expect_accepted(i: &Input) -> bool {
    let s = &i.spec;
    let arch_ok = i.arch.as_deref().is_none_or(|a| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    name_ok(&s.name)
        && !s.name.contains('/')
        && s.vcpus >= 1
        && s.memory_mb >= 1
        && s.memory_mb.checked_mul(1024).is_some()
        && label_ok(&s.image_id)
        && label_ok(&s.image_name)
        && label_ok(&s.flavor_name)
        && s.metadata.len() <= MAX_METADATA_ITEMS
        && s.metadata.iter().all(|(k, v)| {
            name_ok(k) && v.len() <= MAX_METADATA_VALUE_BYTES && v.chars().all(xml_char)
        })
        && arch_ok
}

const ALLOWED_ELEMENTS: &[&str] = &[
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

/// Runs one input; panics on a broken rule (see the module doc).
pub fn check(data: &[u8]) {
    let input = decode(data);
    let spec = &input.spec;
    let expected = expect_accepted(&input);
    let result = domain_xml_for(spec, input.domain_type, input.arch.as_deref());
    match (&result, expected) {
        (Ok(_), false) => panic!("accepted a spec that breaks the rules: {input:?}"),
        (Err(e), true) => panic!("refused a valid spec ({e}): {input:?}"),
        _ => {}
    }
    if validate_spec(spec).is_err() {
        assert!(
            result.is_err(),
            "validate_spec refuses what domain_xml_for took"
        );
    }
    if let Ok(xml) = &result {
        round_trip(&input, xml);
    }
    check_snapshot(&spec.name);
    check_escape(&spec.image_name);
    for (k, v) in &spec.metadata {
        check_escape(k);
        check_escape(v);
    }
}

/// The element children of `parent` named `name`.
fn children<'a, 'i>(parent: roxmltree::Node<'a, 'i>, name: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    parent
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == name)
        .collect()
}

fn round_trip(input: &Input, xml: &str) {
    let spec = &input.spec;
    let doc =
        roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not well-formed ({e}):\n{xml}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "domain", "{xml}");
    assert_eq!(root.attribute("type"), Some(input.domain_type.as_str()));
    let one = |name: &str| {
        let found = children(root, name);
        assert_eq!(
            found.len(),
            1,
            "exactly one <{name}> under <domain> in\n{xml}"
        );
        found[0]
    };
    let text = |n: roxmltree::Node<'_, '_>| -> String {
        n.children()
            .filter(|c| c.is_text())
            .filter_map(|c| c.text())
            .collect()
    };
    assert_eq!(text(one("name")), spec.name, "the name round-trips");
    assert_eq!(text(one("uuid")), spec.uuid.hyphenated().to_string());
    let kib = (spec.memory_mb * 1024).to_string();
    assert_eq!(text(one("memory")), kib);
    assert_eq!(text(one("currentMemory")), kib);
    assert_eq!(text(one("vcpu")), spec.vcpus.to_string());
    let os_type = children(one("os"), "type");
    assert_eq!(os_type.len(), 1);
    assert_eq!(os_type[0].attribute("arch"), input.arch.as_deref());
    let instances = children(one("metadata"), "instance");
    assert_eq!(instances.len(), 1, "one berth:instance in\n{xml}");
    let instance = instances[0];
    assert_eq!(instance.tag_name().namespace(), Some(BERTH_XMLNS));
    let flavor = children(instance, "flavor");
    assert_eq!(flavor.len(), 1);
    assert_eq!(flavor[0].attribute("name"), Some(spec.flavor_name.as_str()));
    assert_eq!(
        flavor[0].attribute("vcpus"),
        Some(spec.vcpus.to_string().as_str())
    );
    assert_eq!(
        flavor[0].attribute("disk_gb"),
        Some(spec.disk_gb.to_string().as_str())
    );
    let image = children(instance, "image");
    assert_eq!(image.len(), 1);
    assert_eq!(image[0].attribute("id"), Some(spec.image_id.as_str()));
    assert_eq!(image[0].attribute("name"), Some(spec.image_name.as_str()));
    let mut metadata = BTreeMap::new();
    for p in children(instance, "property") {
        let key = p
            .attribute("key")
            .unwrap_or_else(|| panic!("a property without a key in\n{xml}"));
        assert!(
            metadata.insert(key.to_string(), text(p)).is_none(),
            "metadata key {key:?} written twice"
        );
    }
    assert_eq!(metadata, spec.metadata, "metadata round-trips");
    for n in doc.descendants().filter(|n| n.is_element()) {
        let name = n.tag_name().name();
        assert!(
            ALLOWED_ELEMENTS.contains(&name),
            "unexpected element <{name}> in\n{xml}"
        );
    }
}

fn check_snapshot(name: &str) {
    let expected = name_ok(name) && !name.contains('/');
    match snapshot_xml(name) {
        Ok(xml) => {
            assert!(expected, "snapshot name {name:?} accepted");
            let doc = roxmltree::Document::parse(&xml)
                .unwrap_or_else(|e| panic!("snapshot XML not well-formed ({e}):\n{xml}"));
            let got: String = doc
                .root_element()
                .children()
                .find(|n| n.tag_name().name() == "name")
                .map(|n| n.children().filter_map(|c| c.text()).collect())
                .unwrap_or_default();
            assert_eq!(got, name, "snapshot name round-trips");
        }
        Err(e) => assert!(!expected, "snapshot name {name:?} refused: {e}"),
    }
}

/// `escape` must never panic; for text XML can carry, it must round-trip in an element
/// and in an attribute.
fn check_escape(s: &str) {
    let e = escape(s);
    if !s.chars().all(xml_char) {
        return;
    }
    let xml = format!("<a b=\"{e}\" c='{e}'>{e}</a>");
    let doc = roxmltree::Document::parse(&xml)
        .unwrap_or_else(|err| panic!("escaped {s:?} is not well-formed ({err}): {xml}"));
    let a = doc.root_element();
    assert_eq!(a.attribute("b"), Some(s), "attribute round-trip");
    assert_eq!(
        a.attribute("c"),
        Some(s),
        "single-quoted attribute round-trip"
    );
    let text: String = a.children().filter_map(|c| c.text()).collect();
    assert_eq!(text, s, "element text round-trip");
}

/// Seed corpus: valid specs of each domain type, with hostile but legal text.
pub fn corpus() -> Vec<(String, Vec<u8>)> {
    let spec = |name: &str, metadata: &[(&str, &str)]| InstanceSpec {
        uuid: Uuid::nil(),
        name: name.into(),
        vcpus: 2,
        memory_mb: 2048,
        disk_gb: 20,
        image_id: "img-123".into(),
        image_name: "debian-12".into(),
        flavor_name: "m1.small".into(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let cases = [
        (
            "plain",
            spec("web-1", &[("role", "web")]),
            DomainType::Test,
            None,
        ),
        (
            "kvm-x86",
            spec("instance-1", &[]),
            DomainType::Kvm,
            Some("x86_64"),
        ),
        (
            "qemu-arm",
            spec("arm", &[("k", "")]),
            DomainType::Qemu,
            Some("aarch64"),
        ),
        (
            "markup",
            spec(
                "<b>&amp;\"'</b>",
                &[("a<b", "]]><!-- x -->"), ("tab\tkey", "line\r\nbreak")],
            ),
            DomainType::Kvm,
            Some("x86_64"),
        ),
        (
            "unicode",
            spec("héllo wörld ✓ 𝄞", &[("ключ", "значение")]),
            DomainType::Test,
            Some("s390x"),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, spec, domain_type, arch)| {
            (
                name.to_string(),
                encode(&Input {
                    spec,
                    domain_type,
                    arch: arch.map(str::to_string),
                }),
            )
        })
        .collect()
}
