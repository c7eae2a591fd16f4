//! `#[serde(with = "crate::bytes")]` for the bulk bytes of a message (task output, log reads).
//!
//! Why: serde's own `Vec<u8>` is a sequence, which bincode encodes and decodes one `u8` call at a
//! time; a worker streaming 64 MiB of output spent most of its encoding there, and the master
//! as much decoding it. As bytes, bincode copies the slice whole. The wire format is the same
//! (bincode writes a sequence and a byte string alike: the length as a varint, then the bytes),
//! so this changes no frame and needs no protocol bump. JSON also stays an array of numbers.

use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::Serializer;
use std::fmt;

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
        Ok(v.as_bytes().to_vec())
    }

    /// Formats that write bytes as a list of numbers (JSON). The size hint is the input's
    /// claim: it is capped so a forged length cannot make this allocate.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 << 10));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        a: u64,
        bytes: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Raw {
        a: u64,
        #[serde(with = "crate::bytes")]
        bytes: Vec<u8>,
    }

    fn bin<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encodes")
    }

    #[test]
    fn same_wire_format_as_a_sequence_in_bincode_and_json() {
        for len in [0usize, 1, 250, 251, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let plain = Plain {
                a: 7,
                bytes: bytes.clone(),
            };
            let raw = Raw { a: 7, bytes };
            assert_eq!(bin(&plain), bin(&raw));
            let (back, _): (Raw, usize) =
                bincode::serde::decode_from_slice(&bin(&plain), bincode::config::standard())
                    .expect("decodes");
            assert_eq!(back, raw);
            let json = serde_json::to_string(&plain).expect("json");
            assert_eq!(json, serde_json::to_string(&raw).expect("json"));
            assert_eq!(serde_json::from_str::<Raw>(&json).expect("json back"), raw);
        }
    }

    #[test]
    fn a_forged_length_fails_without_allocating() {
        // a = 0, then a length of 2^60 and no bytes.
        let body = [0u8, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let config = bincode::config::standard().with_limit::<{ 16 << 20 }>();
        assert!(bincode::serde::decode_from_slice::<Raw, _>(&body, config).is_err());
    }
}
