//! Replays `write_rpcs` inputs against a fresh engine in a plain build.
//!
//! - `cargo run --example replay -- write_rpcs-history.bin`: the inputs a failed audit
//!   saved (the target writes them to `write_rpcs-history.bin`, or `$BERTH_FUZZ_HISTORY`),
//!   printing each call's outcome; the failing audit panics again with its full message.
//! - `cargo run --example replay -- --raw FILE`: one input (a crash file from `artifacts/`).
//! - `cargo run --example replay -- --summary DIR`: every file of a corpus directory, in
//!   name order, then a count of outcomes per RPC (to see which paths a corpus reaches).
//!
//! Run from `fuzz/`.

use std::collections::BTreeMap;

use berth_fuzz::write_rpcs::{Rpc, World, decode_history};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        return Err("usage: replay [--raw | --summary] PATH".into());
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let inputs = if flag("--summary") {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{path}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| read(f))
            .collect::<Result<Vec<_>, _>>()?
    } else if flag("--raw") {
        vec![read(path.as_ref())?]
    } else {
        decode_history(&read(path.as_ref())?)
    };
    let mut world = World::new();
    let mut tally: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (i, input) in inputs.iter().enumerate() {
        let rpc = input
            .first()
            .map(|b| Rpc::ALL[*b as usize % Rpc::ALL.len()]);
        let out = world.run(input);
        let key = match &out {
            None => "undecodable".to_string(),
            Some(Ok(())) => "OK".to_string(),
            Some(Err(s)) => format!("{:?}", s.code()),
        };
        *tally
            .entry(format!("{rpc:?}"))
            .or_default()
            .entry(key)
            .or_default() += 1;
        if !flag("--summary") {
            println!("{i:4} {rpc:?}: {out:?}");
        }
    }
    if flag("--summary") {
        for (rpc, outcomes) in tally {
            println!("{rpc:40} {outcomes:?}");
        }
    }
    Ok(())
}
