//! SHA-256, through ring: the audit store hashes every record on the write path and again
//! in `verify`, and ring's SHA-256 is assembly with SSSE3/AVX2 code paths, where the
//! portable code that `sha2` falls back to on CPUs without the SHA extensions was the
//! largest cost of storing a record. Policy digests use the same function.

use ring::digest::{Context, Digest, SHA256};

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Sha256 {
    bytes_of(ring::digest::digest(&SHA256, bytes))
}

/// A SHA-256 computation fed piece by piece; [`finish`] it.
pub fn hasher() -> Context {
    Context::new(&SHA256)
}

/// The digest of what was fed to `hasher`.
pub fn finish(hasher: Context) -> Sha256 {
    bytes_of(hasher.finish())
}

fn bytes_of(digest: Digest) -> Sha256 {
    digest
        .as_ref()
        .try_into()
        .expect("a SHA-256 digest is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers_whole_and_piecewise() {
        // FIPS 180-2, appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hex::encode(sha256(b"abc")), abc);
        let mut pieces = hasher();
        pieces.update(b"a");
        pieces.update(b"bc");
        assert_eq!(hex::encode(finish(pieces)), abc);
    }
}
