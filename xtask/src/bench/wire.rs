//! Goal-state messages pushed as the bytes a controller sends: encoded
//! before the clock starts and their replies decoded after it stops, so that
//! a benchmark times the agent, not this client (built without
//! optimisation, its encoding of a million neighbors took more CPU than the
//! agent's whole work).

use alcor_proto::schema::{GoalStateOperationReply, GoalStateV2};
use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};

const PUSH_STREAM: &str = "/alcor.schema.GoalStateProvisioner/PushGoalStatesStream";

/// Encoded messages, as they go on the wire.
pub fn encode(messages: &[GoalStateV2]) -> Vec<Bytes> {
    messages
        .iter()
        .map(|message| Bytes::from(message.encode_to_vec()))
        .collect()
}

/// Pushes encoded V2 messages on one stream and returns the replies as
/// received (encoded), up to `messages.len()` of them.
pub async fn push_stream(channel: Channel, messages: Vec<Bytes>) -> anyhow::Result<Vec<Bytes>> {
    let count = messages.len();
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await.context("the agent's gRPC channel")?;
    let mut replies = grpc
        .streaming(
            tonic::Request::new(futures::stream::iter(messages)),
            PathAndQuery::from_static(PUSH_STREAM),
            Raw,
        )
        .await?
        .into_inner();
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        match replies.message().await? {
            Some(reply) => received.push(reply),
            None => break,
        }
    }
    Ok(received)
}

/// Decodes replies [`push_stream`] returned.
pub fn decode_replies(replies: &[Bytes]) -> anyhow::Result<Vec<GoalStateOperationReply>> {
    replies
        .iter()
        .map(|reply| GoalStateOperationReply::decode(reply.as_ref()).context("a reply"))
        .collect()
}

/// A codec that passes messages through as bytes.
#[derive(Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
