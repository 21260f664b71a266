//! File hashing (checkpoint identities, download verification).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Context, Result};

/// Lower-case hex SHA-256 of a file's bytes, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|x| format!("{x:02x}")).collect())
}

/// Lower-case hex SHA-256 of bytes (cache keys).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|x| format!("{x:02x}")).collect()
}
