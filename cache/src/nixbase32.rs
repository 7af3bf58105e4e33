//! Nix's own base32: the alphabet `0123456789abcdfghijklmnpqrsvwxyz` with
//! Nix's bit order (least significant bits of the last byte first), as used in
//! store path hash parts and `sha256:` hashes. Not RFC 4648.

/// The 32 digits, in value order (no `e`, `o`, `u`, `t`).
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Errors decoding Nix base32.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Base32Error {
    #[error("invalid nix base32 character {0:?}")]
    InvalidChar(char),
    #[error("nix base32 string has length {got}, expected {expected}")]
    BadLength { got: usize, expected: usize },
    #[error("nix base32 string encodes more bits than the hash holds")]
    TrailingBits,
}

/// Length of the encoding of `bytes` bytes.
pub const fn encoded_len(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes * 8 - 1) / 5 + 1
    }
}

/// Encodes bytes the way Nix prints hashes.
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let low = u16::from(input[i]) >> j;
        let high = if i + 1 < input.len() {
            u16::from(input[i + 1]) << (8 - j)
        } else {
            0
        };
        out.push(ALPHABET[usize::from((low | high) & 0x1f)] as char);
    }
    out
}

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// True when `c` is a Nix base32 digit.
pub fn is_digit(c: u8) -> bool {
    digit(c).is_some()
}

/// Decodes a Nix base32 string into exactly `N` bytes.
pub fn decode<const N: usize>(s: &str) -> Result<[u8; N], Base32Error> {
    let expected = encoded_len(N);
    if s.len() != expected {
        return Err(Base32Error::BadLength {
            got: s.len(),
            expected,
        });
    }
    let mut out = [0u8; N];
    for (n, c) in s.bytes().rev().enumerate() {
        let d = digit(c).ok_or(Base32Error::InvalidChar(c as char))?;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= d << j;
        let carry = u16::from(d) >> (8 - j);
        if i + 1 < N {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(Base32Error::TrailingBits);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sha256_of_empty_matches_nix() {
        // `nix hash file --base32` of an empty file, measured with nix 2.8.
        let digest = hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(
            encode(&digest),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        let back: [u8; 32] =
            decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").unwrap();
        assert_eq!(back.to_vec(), digest);
    }

    #[test]
    fn roundtrip_all_lengths() {
        let data: Vec<u8> = (0..=255u8)
            .map(|b| b.wrapping_mul(37).wrapping_add(11))
            .collect();
        let enc = encode(&data[..20]);
        assert_eq!(enc.len(), 32);
        assert_eq!(decode::<20>(&enc).unwrap().to_vec(), data[..20].to_vec());
        let enc = encode(&data[..32]);
        assert_eq!(enc.len(), 52);
        assert_eq!(decode::<32>(&enc).unwrap().to_vec(), data[..32].to_vec());
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            decode::<20>("e0000000000000000000000000000000"),
            Err(Base32Error::InvalidChar('e'))
        );
        assert!(matches!(
            decode::<20>("000"),
            Err(Base32Error::BadLength { .. })
        ));
        // 52 digits hold 260 bits; a top digit above 0..=0xf overflows 256 bits.
        let mut s = String::from("z");
        s.push_str(&"0".repeat(51));
        assert_eq!(decode::<32>(&s), Err(Base32Error::TrailingBits));
    }
}
