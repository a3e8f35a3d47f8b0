//! Scans every file under the given directories (default: `target/tmp/test-logs`, where
//! the server test harness copies each `kie serve` log and `kie admin` stderr) for API
//! keys, webhook keys and signing-key material (`kie_wire::secrets::scan`). Exits 1 and
//! names file, line and kind — never the secret itself — when one is found; exits 2
//! when there is nothing to scan (a scan of nothing proves nothing).
//!
//! `cargo run -p kie --example scan-secrets -- [DIR...]`

use std::path::{Path, PathBuf};

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            walk(&e.path(), out);
        }
    } else if p.is_file() {
        out.push(p.to_path_buf());
    }
}

fn main() {
    let mut dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        dirs.push(PathBuf::from("target/tmp/test-logs"));
    }
    let mut files = Vec::new();
    for d in &dirs {
        walk(d, &mut files);
    }
    if files.is_empty() {
        eprintln!("scan-secrets: no files under {dirs:?}: nothing was scanned");
        std::process::exit(2);
    }
    let (mut bytes, mut found) = (0usize, 0usize);
    for f in &files {
        let Ok(data) = std::fs::read(f) else { continue };
        bytes += data.len();
        let text = String::from_utf8_lossy(&data);
        for (n, line) in text.lines().enumerate() {
            for hit in kie_wire::secrets::scan(line) {
                found += 1;
                println!(
                    "{}:{}: {:?} at column {} ({} characters)",
                    f.display(),
                    n + 1,
                    hit.kind,
                    hit.offset + 1,
                    hit.len
                );
            }
        }
    }
    println!(
        "scan-secrets: {} files, {} bytes scanned, {found} secrets found",
        files.len(),
        bytes
    );
    if found > 0 {
        std::process::exit(1);
    }
}
