//! Request bodies as the upload reads them: copied into part-sized buffers, so memory is
//! bounded by bytes, whatever the chunking.

use bytes::{Bytes, BytesMut};

/// The part being filled: bytes are copied in until it holds `part_size`, then handed out
/// whole. It grows by doubling up to `part_size`, so a small upload allocates little.
pub struct PartBuffer {
    buffer: BytesMut,
    part_size: usize,
}

impl PartBuffer {
    pub fn new(part_size: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            part_size,
        }
    }

    /// Copies from the front of `rest` until the part is full; then returns the full part
    /// (and `rest` keeps what did not fit).
    pub fn fill(&mut self, rest: &mut &[u8]) -> Option<Bytes> {
        let room = self.part_size - self.buffer.len();
        let take = room.min(rest.len());
        let wanted = self.buffer.len() + take;
        if wanted > self.buffer.capacity() {
            // Grown by hand: `reserve` may round up past the part size.
            let target = (self.buffer.capacity() * 2)
                .max(wanted)
                .max(64 * 1024)
                .min(self.part_size);
            let mut bigger = BytesMut::with_capacity(target);
            bigger.extend_from_slice(&self.buffer);
            self.buffer = bigger;
        }
        self.buffer.extend_from_slice(&rest[..take]);
        *rest = &rest[take..];
        (self.buffer.len() == self.part_size).then(|| self.take())
    }

    /// What the buffer holds, leaving it empty.
    pub fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.buffer).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_whatever_the_chunking() {
        let mut buffer = PartBuffer::new(10);
        let mut parts = Vec::new();
        for chunk in [&b"abc"[..], b"defghijklmnop", b"q", b"rstuvwxyz0123"] {
            let mut rest = chunk;
            while let Some(part) = buffer.fill(&mut rest) {
                parts.push(part);
            }
            assert!(rest.is_empty());
        }
        assert_eq!(
            parts,
            vec![&b"abcdefghij"[..], b"klmnopqrst", b"uvwxyz0123"]
        );
        assert!(buffer.take().is_empty());
    }
}
