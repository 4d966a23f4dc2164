//! Writes the seed corpora under `fuzz/corpus/<target>/`: small valid inputs for every
//! target, so each fuzzing run starts from requests that reach deep into the engine.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus`. Existing files of the same name are
//! overwritten; files the fuzzer added are left alone.

use std::path::Path;

fn write(target: &str, entries: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in entries {
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("{target}: {} seeds in {}", entries.len(), dir.display());
    Ok(())
}

fn text(entries: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    entries
        .iter()
        .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
        .collect()
}

fn main() -> std::io::Result<()> {
    let rpcs: Vec<(String, Vec<u8>)> = berth_fuzz::write_rpcs::corpus()
        .into_iter()
        .map(|(name, input, _)| (name, input))
        .collect();
    write("write_rpcs", &rpcs)?;
    write("domain_xml", &berth_fuzz::domain_xml::corpus())?;
    // extra_specs: a flavor name, then U+0001-separated `key=value` extra specs.
    write(
        "extra_specs",
        &text(&[
            (
                "resources",
                "m1.gpu\u{1}resources:CUSTOM_GPU=1\u{1}resources:VCPU=0",
            ),
            (
                "traits",
                "m1.t\u{1}trait:HW_CPU_X86_AVX2=required\u{1}trait:CUSTOM_X=forbidden",
            ),
            (
                "capabilities",
                "<in> x86\u{1}capabilities:cpu_info:vendor=<in> Intel",
            ),
            (
                "ops",
                ">= 2.0\u{1}capabilities:hv=s== qemu\u{1}aggregate_instance_extra_specs:ssd=<or> true <or> yes",
            ),
            ("cpu-policy", "m1.d\u{1}hw:cpu_policy=dedicated"),
        ]),
    )?;
    // request_spec: 16-byte chunks; four provider sizes and ratios, then requests.
    let mut rs = Vec::new();
    for (total, ratio) in [
        (64u64 << 20 | 16, 4.0f64),
        (8 << 20 | 8, 1.0),
        (1, 1.5),
        (0, 0.0),
    ] {
        rs.extend(total.to_le_bytes());
        rs.extend(ratio.to_bits().to_le_bytes());
    }
    rs.extend(b"\x02\x01HW_CPU_X86_AVX");
    rs.extend(b"\x04\x03CUSTOM_SSD_____");
    write("request_spec", &[("hosts-and-requests".to_string(), rs)])?;
    Ok(())
}
