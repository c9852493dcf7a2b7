//! OCI pieces every module shares: digests, hashing writers, canonical JSON
//! and media types.
//!
//! Digests are oci-spec's [`Digest`] (`sha256:<64 hex>`). JSON documents
//! (manifests, configs, indexes) are serialised through [`canonical_json`]:
//! oci-spec keeps labels, annotations and ports in `HashMap`s, so its own
//! serialisation is not deterministic, while a `serde_json::Value` keeps
//! object keys sorted. Same document, same bytes, same digest, on any machine.

use std::io::{self, Read, Write};

pub use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};

/// Media types bake reads and writes.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// Manifest media types bake accepts when pulling.
    pub const MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

    /// How a layer blob is compressed, from its media type.
    pub fn layer_compression(media_type: &str) -> Option<super::Compression> {
        use super::Compression;
        match media_type {
            OCI_LAYER => Some(Compression::None),
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN => Some(Compression::Gzip),
            OCI_LAYER_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::None => media::OCI_LAYER,
            Self::Gzip => media::OCI_LAYER_GZIP,
            Self::Zstd => media::OCI_LAYER_ZSTD,
        }
    }
}

/// The `sha256:` digest of a finished hash.
pub fn sha256_digest(hash: &[u8]) -> Digest {
    let hex = hex(hash);
    // A 64-digit lowercase hex string is always a valid sha256 digest.
    Digest::try_from(format!("sha256:{hex}")).unwrap_or_else(|_| unreachable!("valid sha256 digest"))
}

/// The `sha256:` digest of some bytes.
pub fn digest_of(bytes: &[u8]) -> Digest {
    sha256_digest(&Sha256::digest(bytes))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Serialises a document with sorted object keys and no insignificant
/// whitespace: the bytes bake hashes and pushes.
pub fn canonical_json<T: serde::Serialize>(doc: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(doc)?;
    serde_json::to_vec(&value)
}

/// A writer that hashes what passes through it and counts it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, the digest and the length of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, sha256_digest(&self.hasher.finalize()), self.len)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what is read through it and counts it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), len: 0 }
    }

    /// The digest and length of what was read.
    pub fn finish(self) -> (Digest, u64) {
        (sha256_digest(&self.hasher.finalize()), self.len)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_sha256sum() {
        // sha256("") and sha256("abc"), as sha256sum prints them.
        assert_eq!(
            digest_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut w = HashWriter::new(Vec::new());
        w.write_all(b"abc").expect("write");
        let (inner, digest, len) = w.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(len, 3);
        assert_eq!(digest.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let mut r = HashReader::new(&b"abc"[..]);
        io::copy(&mut r, &mut io::sink()).expect("read");
        assert_eq!(r.finish().0, digest);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let mut m = std::collections::HashMap::new();
        for k in ["z", "a", "m", "b"] {
            m.insert(k, 1);
        }
        assert_eq!(canonical_json(&m).expect("json"), br#"{"a":1,"b":1,"m":1,"z":1}"#);
    }
}
