//! What the walkers of the container formats share.

/// A box type for a message: printable ASCII as is, other bytes escaped.
pub(super) fn fourcc(kind: &[u8; 4]) -> String {
    kind.escape_ascii().to_string()
}
