//! The decoders face bytes from the network: on any input they return a value or an
//! error, never panic, and what they accept re-encodes to the same bytes it came from.
//! CI runs these with the default case count; `PROPTEST_CASES=1000000` for longer runs.

use bytes::BytesMut;
use coordd_proto::frame::split_frame;
use coordd_proto::*;
use proptest::prelude::*;

fn all_ops() -> impl Strategy<Value = OpCode> {
    proptest::sample::select(OpCode::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn request_decoder_never_panics(op in all_ops(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(req) = Request::decode(op, &mut Reader::new(&body)) {
            // Whatever decodes must encode again without panicking and decode the same.
            let mut out = BytesMut::new();
            req.encode(&mut out);
            let again = Request::decode(req.op_code(), &mut Reader::new(&out));
            prop_assert_eq!(again.as_ref(), Ok(&req));
        }
    }

    #[test]
    fn multi_with_plausible_headers_never_panics(ops in proptest::collection::vec((any::<i32>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..8)) {
        let mut body = BytesMut::new();
        for (op, done, payload) in &ops {
            MultiHeader { op: *op % 24, done: *done, err: -1 }.encode(&mut body);
            body.extend_from_slice(payload);
        }
        let _ = Request::decode(OpCode::Multi, &mut Reader::new(&body));
        let _ = Request::decode(OpCode::MultiRead, &mut Reader::new(&body));
        let _ = MultiResult::decode_all(&mut Reader::new(&body));
    }

    #[test]
    fn record_decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = ConnectRequest::from_bytes(&body);
        let _ = ConnectResponse::from_bytes(&body);
        let _ = RequestHeader::from_bytes(&body);
        let _ = ReplyHeader::from_bytes(&body);
        let _ = WatcherEvent::from_bytes(&body);
        let _ = GetDataResponse::from_bytes(&body);
        let _ = GetAclResponse::from_bytes(&body);
        let _ = SetWatches2::from_bytes(&body);
        let _ = WhoAmIResponse::from_bytes(&body);
        let _ = MultiResult::decode_all(&mut Reader::new(&body));
    }

    #[test]
    fn framing_never_panics_and_respects_the_limit(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8), max in 0usize..128) {
        let mut buf = BytesMut::new();
        for c in chunks {
            buf.extend_from_slice(&c);
            loop {
                match split_frame(&mut buf, max) {
                    Ok(Some(frame)) => prop_assert!(frame.len() <= max),
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                }
            }
        }
    }

    #[test]
    fn path_validation_never_panics(path in "\\PC{0,40}", seq in any::<bool>()) {
        let _ = path::validate_path(&path, seq);
    }
}
