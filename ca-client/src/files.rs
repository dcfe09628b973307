//! Writing an identity to disk like istio-agent's OUTPUT_CERTS: `key.pem` (mode 0600),
//! `cert-chain.pem` (leaf then intermediates), `root-cert.pem`. Each file is written to a
//! temporary name and renamed, so a reader never sees half a file.

use std::io::Write;
use std::path::Path;

use crate::Error;

pub const KEY_FILE: &str = "key.pem";
pub const CHAIN_FILE: &str = "cert-chain.pem";
pub const ROOT_FILE: &str = "root-cert.pem";

/// Writes the three files into `dir` (created if missing).
pub fn write_identity(
    dir: &Path,
    key_pem: &str,
    chain_pem: &str,
    root_pem: &str,
) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    write_atomic(&dir.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
    write_atomic(&dir.join(CHAIN_FILE), chain_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join(ROOT_FILE), root_pem.as_bytes(), 0o644)?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(|source| io(&tmp, source))?;
    file.write_all(bytes).map_err(|source| io(&tmp, source))?;
    file.sync_all().map_err(|source| io(&tmp, source))?;
    std::fs::rename(&tmp, path).map_err(|source| io(path, source))
}

/// Reads a file the user named, with its path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| io(path, source))
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}
