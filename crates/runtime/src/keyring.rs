//! Gossip encryption: AES-256-GCM with a keyring. Every datagram and stream frame is sealed
//! with the primary key under a fresh random 96-bit nonce; a receiver tries every key of its
//! keyring, so keys can be rotated without a flag day: install the new key everywhere, make it
//! primary everywhere, then remove the old one.
//!
//! Envelope: `0xE1 | nonce (12 bytes) | ciphertext | tag (16 bytes)`.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;

/// First byte of an encrypted envelope.
pub const ENVELOPE_V1: u8 = 0xE1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a key or an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The key text is not base64 of 32 bytes.
    #[error(
        "invalid gossip key: {0} (expected 32 bytes, base64-encoded; `colony keygen` makes one)"
    )]
    BadKey(String),
    /// The key is not in the keyring.
    #[error("key is not installed in this agent's keyring")]
    NotInstalled,
    /// The primary key cannot be removed.
    #[error("cannot remove the primary key: make another key primary first")]
    RemovePrimary,
    /// A packet arrived in the clear although encryption is on.
    #[error("unencrypted gossip refused: this agent's gossip is encrypted")]
    Plaintext,
    /// An envelope that is too short or has an unknown version byte.
    #[error("malformed encrypted envelope")]
    Malformed,
    /// No key opened the envelope (wrong key, or tampered with).
    #[error("no key in the keyring decrypts this message")]
    NoKey,
}

/// Parses a base64 key of exactly 32 bytes.
pub fn parse_key(text: &str) -> Result<[u8; 32], KeyringError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| KeyringError::BadKey(format!("not base64: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| KeyringError::BadKey(format!("{} bytes", bytes.len())))
}

/// Encodes a key as base64.
pub fn format_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Why a keyring file could not be read or written; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyringFileError {
    /// Reading or writing failed.
    #[error("keyring file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not a key, or there are no keys.
    #[error("keyring file {path} is damaged: {what}")]
    Damaged {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Reads a keyring file (one base64 key per line, primary first); `Ok(None)` if it does not
/// exist.
///
/// # Errors
/// [`KeyringFileError`] naming the file if it cannot be read or holds anything but keys.
pub fn load_keyring(path: &std::path::Path) -> Result<Option<Keyring>, KeyringFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KeyringFileError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let damaged = |what: String| KeyringFileError::Damaged {
        path: path.to_path_buf(),
        what,
    };
    let mut keys = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        keys.push(parse_key(line).map_err(|e| damaged(format!("line {}: {e}", number + 1)))?);
    }
    let (&primary, others) = keys
        .split_first()
        .ok_or_else(|| damaged("no keys".to_string()))?;
    let mut ring = Keyring::new(primary);
    for key in others {
        ring.install(*key);
    }
    Ok(Some(ring))
}

/// Writes `ring` to `path` durably: a temporary file, fsync, rename, directory fsync. The
/// directory is created if missing. The file holds secrets: it is created with mode 0600.
///
/// # Errors
/// [`KeyringFileError::Io`] naming the file.
pub fn save_keyring(path: &std::path::Path, ring: &Keyring) -> Result<(), KeyringFileError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| KeyringFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io)?;
    let mut text = ring.list().join("\n");
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// A fresh random key, base64-encoded.
pub fn generate_key() -> String {
    let key = Aes256Gcm::generate_key(OsRng);
    base64::engine::general_purpose::STANDARD.encode(key.as_slice())
}

/// The keys an agent accepts; the first one is primary (used to encrypt).
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<([u8; 32], Aes256Gcm)>,
    /// Bumped by every change, so watchers notice one cheaply.
    generation: u64,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

impl Keyring {
    /// A keyring holding one (primary) key.
    pub fn new(primary: [u8; 32]) -> Self {
        Self {
            keys: vec![(primary, cipher(&primary))],
            generation: 0,
        }
    }

    /// How many changes the keyring has seen.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `key` is installed, and whether it is primary.
    pub fn holds(&self, key: &[u8; 32]) -> Option<bool> {
        self.keys
            .iter()
            .position(|(k, _)| k == key)
            .map(|pos| pos == 0)
    }

    /// The keys' fingerprints ([`fingerprint`]), primary first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|(k, _)| fingerprint(k)).collect()
    }

    /// The keys, primary first, base64-encoded.
    pub fn list(&self) -> Vec<String> {
        self.keys.iter().map(|(k, _)| format_key(k)).collect()
    }

    /// Adds a key (accepted for decryption; not used to encrypt). Installing a present key is
    /// a no-op.
    pub fn install(&mut self, key: [u8; 32]) {
        if !self.keys.iter().any(|(k, _)| *k == key) {
            self.keys.push((key, cipher(&key)));
            self.generation += 1;
        }
    }

    /// Makes an installed key primary.
    pub fn use_key(&mut self, key: [u8; 32]) -> Result<(), KeyringError> {
        let pos = self
            .keys
            .iter()
            .position(|(k, _)| *k == key)
            .ok_or(KeyringError::NotInstalled)?;
        let entry = self.keys.remove(pos);
        self.keys.insert(0, entry);
        self.generation += 1;
        Ok(())
    }

    /// Removes a key that is not primary.
    pub fn remove(&mut self, key: [u8; 32]) -> Result<(), KeyringError> {
        match self.keys.iter().position(|(k, _)| *k == key) {
            None => Err(KeyringError::NotInstalled),
            Some(0) => Err(KeyringError::RemovePrimary),
            Some(pos) => {
                self.keys.remove(pos);
                self.generation += 1;
                Ok(())
            }
        }
    }

    /// Seals `plaintext` with the primary key.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let (_, primary) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = primary
            .encrypt(&nonce, plaintext)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(ENVELOPE_V1);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens an envelope with whichever key sealed it.
    pub fn open(&self, bytes: &[u8]) -> Result<Vec<u8>, KeyringError> {
        match bytes.first() {
            Some(&ENVELOPE_V1) => {}
            Some(b'C') => return Err(KeyringError::Plaintext),
            _ => return Err(KeyringError::Malformed),
        }
        if bytes.len() < 1 + NONCE_LEN + TAG_LEN {
            return Err(KeyringError::Malformed);
        }
        let nonce = Nonce::from_slice(&bytes[1..1 + NONCE_LEN]);
        let sealed = &bytes[1 + NONCE_LEN..];
        self.keys
            .iter()
            .find_map(|(_, c)| c.decrypt(nonce, sealed).ok())
            .ok_or(KeyringError::NoKey)
    }
}

/// A key check value: 8 hex digits of the key's AES-GCM seal of a fixed text under a fixed
/// nonce. It names a key to other members (in a gossip tag) without revealing it.
pub fn fingerprint(key: &[u8; 32]) -> String {
    let sealed = cipher(key)
        .encrypt(
            Nonce::from_slice(&[0u8; NONCE_LEN]),
            &b"colony keyring fingerprint"[..],
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    sealed[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_name_keys_stably_and_apart_and_follow_the_primary() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(fingerprint(&a), fingerprint(&a));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 8);
        let mut ring = Keyring::new(a);
        ring.install(b);
        assert_eq!(ring.fingerprints(), vec![fingerprint(&a), fingerprint(&b)]);
        let before = ring.generation();
        ring.install(b);
        assert_eq!(
            ring.generation(),
            before,
            "installing a held key changes nothing"
        );
        ring.use_key(b).expect("installed");
        assert_eq!(ring.fingerprints()[0], fingerprint(&b));
        assert_eq!(ring.holds(&b), Some(true));
        assert_eq!(ring.holds(&a), Some(false));
        assert!(ring.generation() > before);
    }

    #[test]
    fn keyring_file_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("serf").join("local.keyring");
        assert!(load_keyring(&path).expect("absent is fine").is_none());
        let mut ring = Keyring::new([1; 32]);
        ring.install([2; 32]);
        ring.use_key([2; 32]).expect("installed");
        save_keyring(&path, &ring).expect("save");
        let loaded = load_keyring(&path).expect("load").expect("present");
        assert_eq!(loaded.list(), ring.list());
        std::fs::write(&path, "AAAA\n").expect("damage");
        let error = load_keyring(&path).expect_err("damaged").to_string();
        assert!(
            error.contains("local.keyring") && error.contains("line 1"),
            "{error}"
        );
        std::fs::write(&path, "\n").expect("empty");
        assert!(
            load_keyring(&path).is_err(),
            "a file without keys is damaged"
        );
    }

    fn key(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    #[test]
    fn sealed_messages_open_with_any_installed_key_and_only_those() {
        let mut a = Keyring::new(key(1));
        let b = Keyring::new(key(2));
        let sealed = a.seal(b"hello");
        assert_eq!(a.open(&sealed), Ok(b"hello".to_vec()));
        assert_eq!(b.open(&sealed), Err(KeyringError::NoKey));
        a.install(key(2));
        a.use_key(key(2)).expect("installed");
        let sealed = a.seal(b"rotated");
        assert_eq!(b.open(&sealed), Ok(b"rotated".to_vec()));
        assert_eq!(a.list()[0], format_key(&key(2)), "primary first");
    }

    #[test]
    fn tampering_plaintext_and_truncation_are_refused() {
        let ring = Keyring::new(key(7));
        let mut sealed = ring.seal(b"payload");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(ring.open(&sealed), Err(KeyringError::NoKey));
        assert_eq!(ring.open(b"CS\x01abc"), Err(KeyringError::Plaintext));
        assert_eq!(
            ring.open(&[ENVELOPE_V1, 0, 1]),
            Err(KeyringError::Malformed)
        );
        assert_eq!(ring.open(b""), Err(KeyringError::Malformed));
    }

    #[test]
    fn the_primary_key_cannot_be_removed_and_keys_parse_strictly() {
        let mut ring = Keyring::new(key(1));
        assert_eq!(ring.remove(key(1)), Err(KeyringError::RemovePrimary));
        assert_eq!(ring.remove(key(3)), Err(KeyringError::NotInstalled));
        ring.install(key(3));
        assert_eq!(ring.remove(key(3)), Ok(()));
        let text = generate_key();
        assert_eq!(parse_key(&text).map(|k| format_key(&k)), Ok(text));
        assert!(matches!(
            parse_key("c2hvcnQ="),
            Err(KeyringError::BadKey(_))
        ));
        assert!(matches!(parse_key("!!!"), Err(KeyringError::BadKey(_))));
    }

    #[test]
    fn nonces_are_fresh() {
        let ring = Keyring::new(key(9));
        assert_ne!(ring.seal(b"same"), ring.seal(b"same"));
    }
}
