//! The peer protocol as a member's listener and caller read it (coordd/raft/src/network/tcp:
//! server.rs, client.rs): the input is the byte stream a peer sends, read by the real
//! `FrameReader` in uneven pieces. The first frame (handshake limit) is checked as a `Hello`
//! by the listener and as a `HelloReply` by the caller; every later frame (post-handshake
//! limit) is decoded as a `Message`. A frame error ends the stream, as it closes the
//! connection there.
//!
//! Properties: nothing panics; the reader never returns a frame over its limit and never
//! waits on a source that has bytes or has ended; what decodes re-encodes, and decoding that
//! again gives the same encoding (postcard accepts overlong varints, so the first encoding
//! may differ from the input, the second may not differ from the first).

#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use coordd_raft::tcp::wire::{
    check_hello, check_reply, decode, encode_frame, FrameReader, HelloReply, Message,
    HANDSHAKE_FRAME_BYTES_MAX,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// Small, so that inputs of libFuzzer's size reach the limit check; the real default (16 MiB)
/// takes the same path.
const FRAME_BYTES_MAX: usize = 3000;

const CLUSTER: &str = "coordd";
const ME: u64 = 2;

/// A source that hands out its bytes in pieces of uneven size (a function of the position),
/// so frames and headers arrive split as TCP may split them. Always ready.
struct Pieces<'a> {
    data: &'a [u8],
    pos: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let pos = self.pos;
        let piece = 1 + (pos.wrapping_mul(7919) ^ self.data.len()) % 1500;
        let n = piece.min(out.remaining()).min(self.data.len() - pos);
        out.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Polls a future that must complete at once (the source never pends).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("FrameReader waited on a source that is always ready"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut src = Pieces { data, pos: 0 };
    let mut reader = FrameReader::new();

    // The handshake frame, as both sides check it.
    let Ok(Some(first)) = now(reader.next(&mut src, HANDSHAKE_FRAME_BYTES_MAX)) else {
        return;
    };
    assert!(first.len() <= HANDSHAKE_FRAME_BYTES_MAX);
    if let Ok(hello) = check_hello(&first, CLUSTER, ME) {
        let f = encode_frame(&hello, usize::MAX).expect("re-encode hello");
        assert_eq!(check_hello(&f[4..], CLUSTER, ME).as_ref(), Ok(&hello));
    }
    let _ = check_reply(&first, 1);
    if let Ok(reply) = decode::<HelloReply>(&first) {
        let f = encode_frame(&reply, usize::MAX).expect("re-encode hello reply");
        assert_eq!(decode::<HelloReply>(&f[4..]).ok().as_ref(), Some(&reply));
    }

    // The messages after it.
    loop {
        let body = match now(reader.next(&mut src, FRAME_BYTES_MAX)) {
            Ok(Some(body)) => body,
            Ok(None) | Err(_) => return,
        };
        assert!(body.len() <= FRAME_BYTES_MAX);
        let Ok(message) = decode::<Message>(&body) else {
            return;
        };
        let once = encode_frame(&message, usize::MAX).expect("re-encode message");
        let again = decode::<Message>(&once[4..]).expect("decode re-encoded message");
        let twice = encode_frame(&again, usize::MAX).expect("re-encode message again");
        assert_eq!(once, twice, "{message:?} does not round-trip");
    }
});
