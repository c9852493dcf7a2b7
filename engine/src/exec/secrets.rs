//! Secrets: read once, checked, mounted as private copies, and masked in
//! everything the build reports.
//!
//! Every `--secret` is read when the build starts. A file secret must be a
//! regular file (a directory would be mounted whole, sockets and all; a
//! device or a FIFO could block or leak the host's data) of at most
//! [`MAX_SECRET_SIZE`] bytes, the cap BuildKit uses. A step never sees the
//! user's file itself: it gets a 0600 copy of the bytes read here, in its
//! scratch folder, so that what a step can print is exactly what is masked.
//!
//! # Masking
//!
//! The [`Masker`] knows, for each secret, the byte strings that would give
//! it away and replaces each occurrence with `****`:
//!
//! - the value, and the value without its trailing whitespace (`cat` of a
//!   file that ends in a newline prints the line without it);
//! - each line of a multi-line value (a PEM key printed line by line);
//! - its base64, standard and URL-safe alphabets, with and without padding,
//!   and, for each of the 3 alignments a secret can have inside a longer
//!   base64 text, the characters that depend on the secret's bytes alone
//!   (so `base64` of a file that embeds the secret is caught too, up to the 1
//!   or 2 characters at each end that mix in the neighbouring bytes);
//! - the 76-character lines `base64` (coreutils) wraps a long encoding into.
//!
//! Output is masked a whole line at a time, after the line is assembled from
//! however many reads it arrived in, so a secret split across two reads is
//! still caught. Strings shorter than [`MIN_MASKED_LEN`] bytes are not masked:
//! masking every `a` or `42` in the output would garble it and would show
//! where the secret's characters are anyway. A secret that short gets a
//! warning instead. What bake cannot mask: a secret transformed in any other
//! way (hex, gzip, reversed, one character per line) or written into a layer
//! or an artifact by the step; bake masks what it prints, the step's author
//! decides what the step does.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::{Event, Events, ExecError, Secret, SecretSource};

/// The largest secret bake reads, as BuildKit (500 KiB): secrets are keys
/// and tokens, not data sets, and each step gets its own copy.
pub const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// Shorter strings are not masked (see the module docs).
pub const MIN_MASKED_LEN: usize = 4;

/// What replaces a secret in output.
pub const MASK: &str = "****";

/// The width `base64` (coreutils) wraps its output at.
const BASE64_WRAP: usize = 76;

/// A secret's value, read when the build starts.
pub(super) struct Loaded {
    pub(super) id: String,
    pub(super) value: Vec<u8>,
}

/// Never shows the value.
impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Loaded({}, {} bytes)", self.id, self.value.len())
    }
}

/// Reads every secret's value: files checked and capped, variables as set
/// (an unset variable is an empty secret, as BuildKit).
pub(super) fn load(secrets: &[Secret]) -> Result<Vec<Loaded>, ExecError> {
    secrets
        .iter()
        .map(|secret| {
            let value = match &secret.source {
                SecretSource::File(path) => read_file(&secret.id, path)?,
                SecretSource::Env(var) => std::env::var_os(var).unwrap_or_default().into_encoded_bytes(),
            };
            Ok(Loaded { id: secret.id.clone(), value })
        })
        .collect()
}

/// A file secret's bytes: a regular file (symlinks followed), at most
/// [`MAX_SECRET_SIZE`] bytes.
fn read_file(id: &str, path: &Path) -> Result<Vec<u8>, ExecError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let unreadable = |source| ExecError::SecretUnreadable { id: id.to_owned(), path: path.to_path_buf(), source };
    let not_file = |kind: &'static str| ExecError::SecretNotFile { id: id.to_owned(), path: path.to_path_buf(), kind };
    let kind = |ft: std::fs::FileType| {
        if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        }
    };
    // Checked before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_file(kind(meta.file_type())));
    }
    // Non-blocking, and checked again on what was opened, in case the path
    // was swapped for a FIFO in between.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_file(kind(meta.file_type())));
    }
    let too_large = |size| ExecError::SecretTooLarge { id: id.to_owned(), path: path.to_path_buf(), size };
    if meta.len() > MAX_SECRET_SIZE {
        return Err(too_large(meta.len()));
    }
    let mut value = Vec::new();
    file.take(MAX_SECRET_SIZE + 1).read_to_end(&mut value).map_err(unreadable)?;
    if value.len() as u64 > MAX_SECRET_SIZE {
        return Err(too_large(value.len() as u64));
    }
    Ok(value)
}

/// Replaces every known form of every secret with [`MASK`].
pub(super) struct Masker {
    /// `None` when there is nothing to mask.
    matcher: Option<AhoCorasick>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Masker")
    }
}

impl Masker {
    /// A masker for these secret values.
    pub(super) fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, ExecError> {
        let mut patterns: Vec<Vec<u8>> = values.into_iter().flat_map(forms).collect();
        patterns.retain(|p| p.len() >= MIN_MASKED_LEN);
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Ok(Self::none());
        }
        // Fails only past the matcher's size limits, far above what a few
        // 500 KiB secrets make; never mask nothing silently.
        let matcher = AhoCorasick::new(&patterns).map_err(|e| ExecError::Masking { message: e.to_string() })?;
        Ok(Self { matcher: Some(matcher) })
    }

    /// A masker that masks nothing.
    pub(super) fn none() -> Self {
        Self { matcher: None }
    }

    /// `text` with every occurrence of a secret form replaced; overlapping
    /// and adjacent occurrences become one mask.
    pub(super) fn mask<'t>(&self, text: &'t [u8]) -> Cow<'t, [u8]> {
        let Some(matcher) = &self.matcher else { return Cow::Borrowed(text) };
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for m in matcher.find_overlapping_iter(text) {
            match ranges.last_mut() {
                Some(last) if m.start() <= last.1 => last.1 = last.1.max(m.end()),
                _ => ranges.push((m.start(), m.end())),
            }
        }
        if ranges.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in ranges {
            out.extend_from_slice(&text[at..start]);
            out.extend_from_slice(MASK.as_bytes());
            at = end;
        }
        out.extend_from_slice(&text[at..]);
        Cow::Owned(out)
    }

    /// [`mask`](Self::mask) for text.
    pub(super) fn mask_str<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.mask(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

/// Masks nothing: for work that runs no step (`explain`).
pub(super) static NO_MASKER: Masker = Masker { matcher: None };

/// Passes events on with every secret masked in their text: step output,
/// failure messages (which quote the output's last lines), warnings.
pub(super) struct MaskedEvents<'a> {
    pub(super) inner: &'a dyn Events,
    pub(super) masker: Masker,
}

impl Events for MaskedEvents<'_> {
    fn event(&self, mut event: Event) {
        let m = &self.masker;
        let mask = |text: &mut String| {
            if let Cow::Owned(masked) = m.mask_str(text) {
                *text = masked;
            }
        };
        match &mut event {
            Event::Output { line, .. } => mask(line),
            Event::Failed { message, .. } | Event::Warning { message } => mask(message),
            Event::Started { description, .. } | Event::Cached { description, .. } => mask(description),
            _ => {}
        }
        self.inner.event(event);
    }
}

/// Every form of one value that gives it away (see the module docs).
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let trimmed = value.trim_ascii_end();
    for v in [value, trimmed] {
        out.push(v.to_vec());
        for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            out.push(engine.encode(v).into_bytes());
        }
        let wrapped = STANDARD.encode(v);
        if wrapped.len() > BASE64_WRAP {
            out.extend(wrapped.as_bytes().chunks(BASE64_WRAP).map(<[u8]>::to_vec));
        }
        for align in 0..3 {
            out.push(aligned_core(v, align, false));
            out.push(aligned_core(v, align, true));
        }
    }
    if trimmed.contains(&b'\n') {
        out.extend(trimmed.split(|b| *b == b'\n').map(|line| line.trim_ascii().to_vec()));
    }
    out
}

/// The base64 characters that encode `value`'s bytes alone when it starts
/// `align` bytes past a 3-byte boundary of a longer text: a character
/// covers 6 bits, so those that mix in a neighbour's bits are left out.
fn aligned_core(value: &[u8], align: usize, url_safe: bool) -> Vec<u8> {
    let mut padded = vec![0u8; align];
    padded.extend_from_slice(value);
    let engine = if url_safe { &URL_SAFE_NO_PAD } else { &STANDARD_NO_PAD };
    let encoded = engine.encode(&padded).into_bytes();
    let first = (8 * align).div_ceil(6);
    let end = (8 * (align + value.len())) / 6;
    encoded.get(first..end.min(encoded.len())).map(<[u8]>::to_vec).unwrap_or_default()
}

/// Splits a stream of output chunks into lines, masked: a line is masked
/// only once it is whole, so a secret split across reads is caught.
#[derive(Debug, Default)]
pub(super) struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Adds a chunk; returns the lines it completes, masked, without their
    /// line ends.
    pub(super) fn push(&mut self, chunk: &[u8], masker: &Masker) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            lines.push(finish(&self.partial[start..end], masker));
            start = end + 1;
        }
        self.partial.drain(..start);
        lines
    }

    /// The last line, when the output did not end with a line end.
    pub(super) fn finish(self, masker: &Masker) -> Option<String> {
        (!self.partial.is_empty()).then(|| finish(&self.partial, masker))
    }
}

fn finish(line: &[u8], masker: &Masker) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(&masker.mask(line)).into_owned()
}

/// Where a step's copy of a secret goes in its scratch folder.
pub(super) fn scratch_path(scratch: &Path, id: &str) -> PathBuf {
    scratch.join(format!("secret-{}", crate::oci::hex(&blake3::hash(id.as_bytes()).as_bytes()[..8])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[&str]) -> Masker {
        Masker::new(values.iter().map(|v| v.as_bytes())).expect("masker")
    }

    #[test]
    fn masks_the_value_and_its_trimmed_form() {
        let m = masker(&["s3cr3t-value\n"]);
        assert_eq!(m.mask_str("token=s3cr3t-value; ok"), "token=****; ok");
        assert_eq!(m.mask_str("nothing here"), "nothing here");
    }

    #[test]
    fn masks_base64_in_every_alphabet_and_alignment() {
        let secret = "s3cr3t-value?>~";
        let m = masker(&[secret]);
        for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let line = engine.encode(secret);
            assert_eq!(m.mask_str(&line), MASK, "{line}");
            // Embedded in a longer text, at each alignment.
            for prefix in ["", "a", "ab", "abc"] {
                for suffix in ["", "x", "xy"] {
                    let encoded = engine.encode(format!("{prefix}{secret}{suffix}"));
                    let masked = m.mask_str(&encoded);
                    assert!(masked.contains(MASK), "{prefix}|{suffix}: {encoded} -> {masked}");
                    // At most 2 characters of the secret's part stay on each side.
                    assert!(masked.len() <= MASK.len() + 4 + 4 + 4, "{encoded} -> {masked}");
                }
            }
        }
    }

    #[test]
    fn masks_wrapped_base64_and_multiline_secrets() {
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END KEY-----\n";
        let m = masker(&[key]);
        assert_eq!(m.mask_str("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"), MASK);
        let wrapped = STANDARD.encode(key);
        for line in wrapped.as_bytes().chunks(BASE64_WRAP) {
            assert_eq!(m.mask(line).as_ref(), MASK.as_bytes());
        }
    }

    #[test]
    fn short_values_are_not_masked() {
        let m = masker(&["abc"]);
        assert_eq!(m.mask_str("abcabc"), "abcabc");
    }

    #[test]
    fn lines_mask_a_secret_split_across_reads() {
        let m = masker(&["hunter2-password"]);
        let mut lines = Lines::default();
        assert!(lines.push(b"first line\nthe secret is hun", &m) == ["first line"]);
        assert_eq!(lines.push(b"ter2-pass", &m), Vec::<String>::new());
        assert_eq!(lines.push(b"word!\r\nlast", &m), ["the secret is ****!"]);
        assert_eq!(lines.finish(&m).as_deref(), Some("last"));
    }

    #[test]
    fn file_secrets_must_be_regular_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "value").expect("write");
        let secret = |path: &Path| Secret { id: "tok".into(), source: SecretSource::File(path.to_path_buf()) };
        let loaded = load(&[secret(&file)]).expect("a file");
        assert_eq!(loaded[0].value, b"value");
        let err = load(&[secret(dir.path())]).expect_err("a directory");
        assert!(matches!(&err, ExecError::SecretNotFile { kind: "a directory", .. }), "{err:?}");
        let err = load(&[secret(Path::new("/dev/null"))]).expect_err("a device");
        assert!(matches!(&err, ExecError::SecretNotFile { kind: "a device", .. }), "{err:?}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let err = load(&[secret(&fifo)]).expect_err("a FIFO");
        assert!(matches!(&err, ExecError::SecretNotFile { kind: "a FIFO", .. }), "{err:?}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; usize::try_from(MAX_SECRET_SIZE).expect("fits") + 1]).expect("write");
        let err = load(&[secret(&big)]).expect_err("too large");
        assert!(matches!(&err, ExecError::SecretTooLarge { .. }), "{err:?}");
    }
}
