//! The compressing end of a layer writer: tar bytes in, compressed bytes
//! (hashed and counted) out.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, Sender, channel};

use gzp::ZWriter;
use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};

use crate::oci::{Compression, HashWriter};

/// A compressor writing into a hashed output.
///
/// `flush` does nothing: flushing a compressor mid-stream ends a block early,
/// and the output would then depend on when callers flushed.
pub(super) enum Encoder<W: Write> {
    Plain(HashWriter<W>),
    Gzip(ParGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, HashWriter<W>>),
}

/// gzp's parallel gzip writer, whose output thread needs a `Send + 'static`
/// writer: it writes into a channel that is drained into the real output on
/// the caller's thread after every write. gzp's pipeline is bounded, so the
/// channel never holds more than a few blocks.
pub(super) struct ParGzip<W: Write> {
    encoder: ParCompress<'static, Gzip, ChannelWriter>,
    compressed: Receiver<Vec<u8>>,
    out: HashWriter<W>,
}

impl<W: Write> ParGzip<W> {
    fn drain(&mut self) -> io::Result<()> {
        while let Ok(chunk) = self.compressed.try_recv() {
            self.out.write_all(&chunk)?;
        }
        Ok(())
    }
}

/// Sends what is written to the caller's thread. When the receiver is gone,
/// the layer is being dropped unfinished and the bytes are discarded.
struct ChannelWriter(Sender<Vec<u8>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A closed channel means nobody wants the output any more.
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Encoder<W> {
    /// A compressor for `compression` at `level` (already validated) with
    /// `threads` workers. If the codec cannot be set up, the output is kept
    /// uncompressed and the reason returned, for the writer to report.
    pub(super) fn new(out: W, compression: Compression, level: Option<i32>, threads: usize) -> (Self, Option<String>) {
        let out = HashWriter::new(out);
        let threads = threads.max(1);
        match compression {
            Compression::None => (Self::Plain(out), None),
            Compression::Gzip => {
                let level = level.and_then(|l| u32::try_from(l).ok()).unwrap_or(6);
                let builder = match ParCompressBuilder::<Gzip>::new().num_threads(threads) {
                    Ok(b) => b,
                    Err(e) => return (Self::Plain(out), Some(format!("cannot start gzip: {e}"))),
                };
                let (sender, compressed) = channel();
                let encoder =
                    builder.compression_level(gzp::Compression::new(level)).from_writer(ChannelWriter(sender));
                (Self::Gzip(ParGzip { encoder, compressed, out }), None)
            }
            Compression::Zstd => match zstd_encoder(level.unwrap_or(3), threads) {
                Ok(raw) => (Self::Zstd(zstd::stream::write::Encoder::with_encoder(out, raw)), None),
                Err(e) => (Self::Plain(out), Some(format!("cannot start zstd: {e}"))),
            },
        }
    }

    /// Ends the compressed stream: the output, its digest and its length.
    pub(super) fn finish(self) -> io::Result<HashWriter<W>> {
        let mut out = match self {
            Self::Plain(out) => out,
            Self::Gzip(mut gz) => {
                let channel = gz.encoder.finish().map_err(io::Error::other)?;
                // The writer thread is done: dropping its sender ends the channel.
                drop(channel);
                for chunk in &gz.compressed {
                    gz.out.write_all(&chunk)?;
                }
                gz.out
            }
            Self::Zstd(encoder) => encoder.finish()?,
        };
        out.flush()?;
        Ok(out)
    }
}

fn zstd_encoder(level: i32, threads: usize) -> io::Result<zstd::stream::raw::Encoder<'static>> {
    use zstd::stream::raw::CParameter;
    let mut raw = zstd::stream::raw::Encoder::new(level)?;
    // Multi-threaded mode, even with one worker: its output does not depend on
    // the number of workers, while single-threaded mode's differs from it.
    raw.set_parameter(CParameter::NbWorkers(u32::try_from(threads).unwrap_or(u32::MAX)))?;
    raw.set_parameter(CParameter::ChecksumFlag(true))?;
    Ok(raw)
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(out) => out.write(buf),
            Self::Gzip(gz) => {
                let n = gz.encoder.write(buf)?;
                gz.drain()?;
                Ok(n)
            }
            Self::Zstd(encoder) => encoder.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
