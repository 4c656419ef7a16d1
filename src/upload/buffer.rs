//! Part buffers: the bytes of an upload copied into part-sized buffers (memory bounded by
//! bytes, whatever the chunking), and the last bytes of a body held back until it ends.

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

    /// Allocates the next part's buffer at `capacity` bytes (what was reserved for it), so
    /// the buffer never grows, and never copies itself, past its reservation.
    pub fn begin(&mut self, capacity: usize) {
        if self.buffer.is_empty() && self.buffer.capacity() < capacity {
            self.buffer = BytesMut::with_capacity(capacity.min(self.part_size));
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

/// The chunks of a body forwarded as it arrives (a streamed PUT): copied into full
/// chunks, the latest full one always held back, so that nothing sent before the body has
/// ended can complete the write. What decides whether the upload is kept (its digest, a
/// retry's comparison) runs first; then `rest` gives the last bytes.
pub struct HeldChunks {
    filling: PartBuffer,
    held: Option<Bytes>,
}

impl HeldChunks {
    pub fn new(chunk_size: usize) -> Self {
        Self {
            filling: PartBuffer::new(chunk_size),
            held: None,
        }
    }

    /// Copies from the front of `rest` until a chunk may be sent; returns it (and `rest`
    /// keeps what was not copied yet). Call until it returns `None`.
    pub fn push(&mut self, rest: &mut &[u8]) -> Option<Bytes> {
        while !rest.is_empty() {
            if let Some(full) = self.filling.fill(rest) {
                if let Some(previous) = self.held.replace(full) {
                    return Some(previous);
                }
            }
        }
        None
    }

    /// What is left once the body has ended: never empty when anything was pushed.
    pub fn rest(mut self) -> Vec<Bytes> {
        let last = self.filling.take();
        self.held
            .into_iter()
            .chain((!last.is_empty()).then_some(last))
            .collect()
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

    /// Whatever the sizes and chunking, the bytes handed out before the end are fewer
    /// than the body, and with the rest they are the body.
    #[test]
    fn held_chunks_never_give_out_the_last_bytes_before_the_end() {
        for total in [1usize, 9, 10, 11, 20, 29, 30, 31, 100] {
            for step in [1usize, 3, 10, 17, 100] {
                let body: Vec<u8> = (0..total).map(|i| i as u8).collect();
                let mut chunks = HeldChunks::new(10);
                let mut sent = Vec::new();
                for piece in body.chunks(step) {
                    let mut rest = piece;
                    while let Some(chunk) = chunks.push(&mut rest) {
                        assert_eq!(chunk.len(), 10);
                        sent.extend_from_slice(&chunk);
                    }
                    assert!(rest.is_empty());
                }
                assert!(
                    sent.len() < total,
                    "{total}/{step}: all sent before the end"
                );
                let rest = chunks.rest();
                assert!(!rest.is_empty() && rest.len() <= 2);
                for chunk in rest {
                    sent.extend_from_slice(&chunk);
                }
                assert_eq!(sent, body, "{total}/{step}");
            }
        }
    }

    #[test]
    fn a_begun_part_holds_what_was_reserved_without_growing() {
        let mut buffer = PartBuffer::new(1 << 20);
        buffer.begin(4096);
        let mut rest = &[7u8; 4096][..];
        assert!(buffer.fill(&mut rest).is_none());
        assert_eq!(buffer.buffer.capacity(), 4096);
        assert_eq!(buffer.take().len(), 4096);
    }
}
