//! MLLP over TCP (tokio): the framing codec and the server.

mod codec;
mod server;

pub use codec::{CR, EB, MllpCodec, MllpFrame, SB};
pub use server::{
    DeadLetter, DeadLetterError, DeadLetters, MllpServer, PeerNet, ServerConfig, Sink, SinkError,
    bind,
};
