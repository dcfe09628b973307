//! The key-encryption key: 32 random bytes in a file (mode 0600), used with AES-256-GCM to seal
//! CA private keys before they reach the store.

use std::fmt;
use std::io::Write;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::keys::Error;

/// Version byte in front of every sealed blob, so the format can change later.
const SEAL_VERSION: u8 = 1;

/// The KEK. Never printed.
pub struct Kek {
    bytes: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    pub fn from_bytes(bytes: [u8; 32]) -> Kek {
        Kek {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// Reads the KEK file, or creates it (mode 0600, 32 random bytes) when it does not exist.
    /// Returns the KEK and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Kek, bool), Error> {
        let io_err = |source| Error::KekFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                check_secret_file_mode(path).map_err(io_err)?;
                let bytes = Zeroizing::new(bytes);
                let array: [u8; 32] =
                    bytes.as_slice().try_into().map_err(|_| Error::KekLength {
                        path: path.display().to_string(),
                        len: bytes.len(),
                    })?;
                Ok((Kek::from_bytes(array), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| Error::Generate("system RNG failed".to_owned()))?;
                write_secret_file(path, &bytes).map_err(io_err)?;
                Ok((Kek::from_bytes(bytes), true))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// `version || nonce || AES-256-GCM(plaintext, aad = context)`.
    pub(crate) fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Encrypt)?;
        let mut buffer = plaintext.to_vec();
        self.key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buffer,
            )
            .map_err(|_| Error::Encrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buffer.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buffer);
        Ok(out)
    }

    pub(crate) fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (version, rest) = sealed.split_first().ok_or(Error::Decrypt)?;
        if *version != SEAL_VERSION || rest.len() < NONCE_LEN {
            return Err(Error::Decrypt);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Decrypt)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plaintext_len = self
            .key()?
            .open_in_place(nonce, Aad::from(context), &mut buffer)
            .map_err(|_| Error::Decrypt)?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }

    fn key(&self) -> Result<LessSafeKey, Error> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, self.bytes.as_slice()).map_err(|_| Error::Encrypt)?;
        Ok(LessSafeKey::new(unbound))
    }
}

/// Refuses a secret file that others may read, as ssh does for keys: any permission for
/// "others", or group permissions unless the group is the process's own (Kubernetes mounts
/// Secrets for a non-root container as group-readable by its `fsGroup`).
pub fn check_secret_file_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path)?;
        let mode = metadata.mode() & 0o777;
        let own_group = metadata.gid() == rustix::process::getegid().as_raw();
        if mode & 0o007 != 0 || (mode & 0o070 != 0 && !own_group) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "mode {mode:04o} lets other users read it: chmod 600 {}",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Creates `path` with mode 0600 (failing if it already exists) and writes `bytes` to it.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
