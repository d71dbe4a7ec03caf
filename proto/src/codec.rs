//! A server codec for `PushGoalStatesStream` that encodes replies with
//! prost and reads each message with the server's own reader ([`ReadMessage`]):
//! in place, or into a lighter type than prost's. (The agent reads them
//! into batches; the benchmarks' stub agents into ids and sizes.)

use std::{fmt::Display, marker::PhantomData};

use prost::Message;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::schema::GoalStateOperationReply;

/// How a server reads one goal-state message.
pub trait ReadMessage: Sized + Send + 'static {
    type Error: Display;

    fn read(message: &mut DecodeBuf<'_>) -> Result<Self, Self::Error>;
}

/// Replies encoded with prost, messages read as `M`.
pub struct ReplyCodec<M>(PhantomData<fn() -> M>);

impl<M> Default for ReplyCodec<M> {
    fn default() -> Self {
        ReplyCodec(PhantomData)
    }
}

impl<M> Clone for ReplyCodec<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for ReplyCodec<M> {}

impl<M: ReadMessage> Codec for ReplyCodec<M> {
    type Encode = GoalStateOperationReply;
    type Decode = M;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl<M: ReadMessage> Encoder for ReplyCodec<M> {
    type Item = GoalStateOperationReply;
    type Error = Status;

    fn encode(&mut self, reply: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        reply
            .encode(dst)
            .map_err(|e| Status::internal(format!("encoding a reply: {e}")))
    }
}

impl<M: ReadMessage> Decoder for ReplyCodec<M> {
    type Item = M;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<M>, Status> {
        // INTERNAL, as tonic answers a message prost cannot decode.
        M::read(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("failed to decode the message: {e}")))
    }
}
