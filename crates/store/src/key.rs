//! KV keys: arbitrary bytes, as etcd's keys are.
//!
//! Consul's API hands keys over as (UTF-8) strings and etcd's as bytes; both write the same
//! store, so a key is bytes and ordered as bytes (which is also UTF-8 strings' order).
//! A key is encoded exactly as a string of the same bytes would be (a length, then the
//! bytes), so logs and snapshots written while keys were strings read unchanged.

use serde::{Deserialize, Serialize};
use std::borrow::{Borrow, Cow};
use std::fmt;

/// A KV key: bytes, ordered bytewise; derefs to its bytes, as `bytes::Bytes` does.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(#[serde(with = "serde_bytes")] Vec<u8>);

impl Key {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as text, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The key as text, with any byte sequence that is not UTF-8 replaced by U+FFFD (as Go's
    /// JSON encoder writes such a string, so Consul's API shows it the same way).
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The key's bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl From<Vec<u8>> for Key {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl From<String> for Key {
    fn from(text: String) -> Self {
        Self(text.into_bytes())
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        Self(text.as_bytes().to_vec())
    }
}

impl From<&String> for Key {
    fn from(text: &String) -> Self {
        Self(text.as_bytes().to_vec())
    }
}

impl From<Key> for Vec<u8> {
    fn from(key: Key) -> Self {
        key.0
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<[u8]> for Key {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl fmt::Display for Key {
    /// The key as text, lossily (see [`Key::to_str_lossy`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str_lossy())
    }
}

impl fmt::Debug for Key {
    /// As a string literal when UTF-8, else as escaped bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(text) => fmt::Debug::fmt(text, f),
            None => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Key;

    #[test]
    fn a_key_encodes_as_the_string_of_its_bytes_did() {
        for text in ["", "a", "service/web/config", "é/ключ/鍵"] {
            let as_string = postcard::to_allocvec(&text.to_string()).expect("encode");
            let as_key = postcard::to_allocvec(&Key::from(text)).expect("encode");
            assert_eq!(as_key, as_string, "{text:?}");
            let decoded: Key = postcard::from_bytes(&as_string).expect("decode");
            assert_eq!(decoded, text);
        }
        let binary = Key::from(vec![0xff, 0x00, 0xc3]);
        let encoded = postcard::to_allocvec(&binary).expect("encode");
        assert_eq!(encoded, [3, 0xff, 0x00, 0xc3]);
        let decoded: Key = postcard::from_bytes(&encoded).expect("decode");
        assert_eq!(decoded, binary);
    }

    #[test]
    fn keys_order_as_their_bytes_and_as_utf8_strings_do() {
        let mut texts = ["b", "a/", "a", "é", "z", "a0", "\u{10000}", "\u{ffff}"];
        let mut keys: Vec<Key> = texts.iter().map(|t| Key::from(*t)).collect();
        texts.sort();
        keys.sort();
        let as_keys: Vec<Key> = texts.iter().map(|t| Key::from(*t)).collect();
        assert_eq!(keys, as_keys);
        let mut mixed = [Key::from(vec![0xff]), Key::from("z")];
        mixed.sort();
        assert_eq!(mixed[0], "z", "0xff sorts after all ASCII");
    }

    #[test]
    fn non_utf8_keys_show_lossily_and_debug_escaped() {
        let key = Key::from(vec![b'a', 0xff, b'b']);
        assert_eq!(key.as_str(), None);
        assert_eq!(key.to_string(), "a\u{fffd}b");
        assert_eq!(format!("{key:?}"), "b\"a\\xffb\"");
        assert_eq!(format!("{:?}", Key::from("a\"b")), "\"a\\\"b\"");
    }
}
