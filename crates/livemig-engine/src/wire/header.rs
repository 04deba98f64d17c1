//! The fixed 12-byte little-endian frame header: magic, version, type, payload length.

use super::{MsgType, Versions, WireError, HEADER_LEN, MAGIC, MAX_PAYLOAD, NEGOTIATING_SINCE};

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub msg_type: u16,
    pub len: u32,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.msg_type.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Checks magic, version, type and the length cap. The version must be one this build
    /// speaks; a [frozen](MsgType::frozen) type (`Hello`, `Versions`, `Error`) may carry any
    /// version that negotiates, so that a peer outside this build's range can still offer its
    /// range or say why it refuses.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<(Header, MsgType), WireError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let h = Header {
            version: u16::from_le_bytes([b[4], b[5]]),
            msg_type: u16::from_le_bytes([b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        };
        let t = MsgType::from_u16(h.msg_type);
        let frozen = t.is_some_and(MsgType::frozen) && h.version >= NEGOTIATING_SINCE;
        if !(Versions::THIS_BUILD.contains(h.version) || frozen) {
            return Err(WireError::Version { got: h.version });
        }
        let t = t.ok_or(WireError::UnknownType(h.msg_type))?;
        if h.len > MAX_PAYLOAD {
            return Err(WireError::TooLong {
                what: "a frame payload",
                len: u64::from(h.len),
                max: u64::from(MAX_PAYLOAD),
            });
        }
        Ok((h, t))
    }
}
