//! Property tests of the frame decoder: garbage, mutated and truncated frames never panic and
//! never decode to more than they hold; valid frames round-trip; hostile lz4 page data never
//! panics and never decodes to anything but exactly one page.

use livemig_engine::wire::{
    BatchWriter, Message, PageEncoding, HEADER_LEN, MAX_LZ4_PAGE, MAX_PAYLOAD, PAGE_SIZE, TAG_LEN,
    VERSION,
};
use proptest::prelude::*;

fn from_bytes(b: &[u8]) -> Result<(Message, usize), livemig_engine::wire::WireError> {
    livemig_engine::wire::Frame::from_bytes(b).map(|f| (f.msg, f.wire_len))
}

fn valid_frames() -> Vec<Vec<u8>> {
    let mut page = [0u8; PAGE_SIZE];
    for (i, b) in page.iter_mut().enumerate() {
        *b = (i % 7) as u8;
    }
    let mut w = BatchWriter::new(true);
    w.push(3, &page);
    w.push(4, &[0; PAGE_SIZE]);
    vec![
        w.frame().to_vec(),
        Message::RoundStart { round: 1, pages: 2 }.encode(),
        Message::State {
            digest: 1,
            blob: vec![1, 2, 3],
        }
        .encode_tagged(&[9; TAG_LEN]),
        Message::Resolve {
            session: [1; 16],
            decision: livemig_engine::wire::ResolveDecision::Commit,
        }
        .encode(),
        Message::Confirm {
            ok: true,
            digest: 5,
        }
        .encode(),
        Message::error(1, "x").encode(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok((_, n)) = from_bytes(&bytes) {
            prop_assert!(n <= bytes.len());
        }
    }

    #[test]
    fn garbage_after_a_valid_header_never_panics(
        t in 0u16..21,
        // Mostly this build's version, sometimes any (`Hello`, `Versions` and `Error` decode
        // under every version that negotiates).
        version in prop_oneof![8 => Just(VERSION), 1 => any::<u16>()],
        // Mostly the body's own length (so that the payload decoders see the garbage, not the
        // end of the stream), sometimes a little off, sometimes anything up to past the cap.
        len_kind in prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
        off in -3i64..=3,
        any_len in 0u32..(MAX_PAYLOAD + 10),
        body in proptest::collection::vec(any::<u8>(), 0..8192),
    ) {
        let len = match len_kind {
            0 => body.len() as u32,
            1 => (body.len() as i64 + off).max(0) as u32,
            _ => any_len,
        };
        let mut f = b"LMIG".to_vec();
        f.extend_from_slice(&version.to_le_bytes());
        f.extend_from_slice(&t.to_le_bytes());
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&body);
        if let Ok(fr) = livemig_engine::wire::Frame::from_bytes(&f) {
            let n = fr.wire_len;
            prop_assert_eq!(n, HEADER_LEN + len as usize);
            // What decodes encodes back to the same bytes (tag included); an error's text is
            // escaped on decoding, so it re-encodes differently when it held control bytes.
            prop_assert_eq!(fr.version, version);
            if !matches!(fr.msg, Message::Error { .. }) {
                prop_assert_eq!(fr.msg.encode_tagged_as(version, &fr.tag.unwrap_or([0; TAG_LEN])), f[..n].to_vec());
            }
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut f = valid_frames()[which].clone();
        for (at, x) in flips {
            let i = at % f.len();
            f[i] ^= x;
        }
        let keep = cut % (f.len() + 1);
        let _ = from_bytes(&f[..keep]);
        let _ = from_bytes(&f);
    }

    #[test]
    fn hostile_lz4_pages_never_panic(
        data in prop_oneof![
            // Raw garbage.
            proptest::collection::vec(any::<u8>(), 1..=MAX_LZ4_PAGE),
            // A real compressed page with bytes flipped and cut.
            (proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), any::<u16>())
                .prop_map(|(flips, cut)| {
                    let mut page = [0u8; PAGE_SIZE];
                    for (i, b) in page.iter_mut().enumerate() {
                        *b = (i / 64) as u8;
                    }
                    let mut c = lz4_flex::block::compress(&page);
                    for (at, x) in flips {
                        let i = at % c.len();
                        c[i] ^= x;
                    }
                    c.truncate((usize::from(cut) % c.len()).max(1));
                    c
                }),
        ],
    ) {
        let mut f = b"LMIG".to_vec();
        let payload_len = 4 + 13 + data.len() + TAG_LEN;
        f.extend_from_slice(&VERSION.to_le_bytes());
        f.extend_from_slice(&6u16.to_le_bytes());
        f.extend_from_slice(&(payload_len as u32).to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&7u64.to_le_bytes());
        f.push(PageEncoding::Lz4 as u8);
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&data);
        f.extend_from_slice(&[0; TAG_LEN]);
        let (m, _) = from_bytes(&f).expect("a well-formed batch");
        let Message::Pages(b) = m else { panic!("a batch") };
        let e = b.entries().next().expect("one entry");
        prop_assert_eq!(e.encoding, PageEncoding::Lz4);
        let mut out = [0xAAu8; PAGE_SIZE];
        // Either exactly one page or an error; never a panic, never a partial page accepted.
        if e.decode_into(&mut out).is_ok() {
            prop_assert_eq!(
                lz4_flex::block::decompress(&data, PAGE_SIZE).map(|v| v.len()).ok(),
                Some(PAGE_SIZE)
            );
        }
    }
}

#[test]
fn valid_frames_decode() {
    for f in valid_frames() {
        let fr = livemig_engine::wire::Frame::from_bytes(&f).expect("valid");
        assert_eq!(fr.wire_len, f.len());
        assert_eq!(fr.msg.encode_tagged(&fr.tag.unwrap_or([0; TAG_LEN])), f);
    }
}

fn control_messages() -> Vec<Message> {
    use livemig_engine::wire::{ResolveDecision, ResolveStatus};
    vec![
        Message::Ready,
        Message::RoundStart { round: 2, pages: 9 },
        Message::RoundEnd { round: 2, pages: 9 },
        Message::StopCopy { pages: 3 },
        Message::State {
            digest: 7,
            blob: b"{\"x\":1}".to_vec(),
        },
        Message::Confirm {
            ok: true,
            digest: 7,
        },
        Message::Commit,
        Message::Running,
        Message::Abort,
        Message::Done,
        Message::Wait,
        Message::Resolve {
            session: [4; 16],
            decision: ResolveDecision::Commit,
        },
        Message::Resolved {
            status: ResolveStatus::Running,
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No single bit flipped anywhere in a sealed control frame gets through the session:
    /// either the frame no longer decodes, or its tag does not verify, or it turned into an
    /// untagged type (`Error`, a handshake message), which every state after the handshake
    /// takes as a failure, never as progress.
    #[test]
    fn a_flipped_bit_never_opens(which in 0usize..13, bit in any::<usize>()) {
        use livemig_engine::auth::{Channel, Key, Role, Transcript};
        let sk = Key::from_bytes([3; 32]).session(&Transcript {
            hello: &[1; 50],
            version: VERSION,
            dest_nonce: &[2; 32],
        });
        let m = &control_messages()[which];
        let mut f = Channel::new(sk.clone(), Role::Source).seal(m);
        let at = bit % (f.len() * 8);
        f[at / 8] ^= 1 << (at % 8);
        if let Ok(fr) = livemig_engine::wire::Frame::from_bytes(&f) {
            if !fr.msg.msg_type().tagged() {
                return Ok(());
            }
            let mut d = Channel::new(sk, Role::Destination);
            prop_assert!(d.open(fr).is_err(), "a flipped bit {at} opened {m:?}");
        }
    }
}
