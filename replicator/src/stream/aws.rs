//! [`StreamSource`] on DynamoDB Streams.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::types::{ShardFilter, ShardFilterType, ShardIteratorType};

use super::{Page, SeqNo, Shard, StartAt, StreamError, StreamSource, record};
use crate::error::AwsFailure;

/// The stream of one table, read through the DynamoDB Streams API.
#[derive(Debug, Clone)]
pub struct AwsStream {
    client: Client,
    arn: String,
}

impl AwsStream {
    /// A reader of the stream `arn` (the source table's `LatestStreamArn`).
    pub fn new(client: Client, arn: String) -> AwsStream {
        AwsStream { client, arn }
    }
}

fn stream_error<E>(error: SdkError<E, HttpResponse>) -> StreamError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error.as_service_error().and_then(|e| e.code()) {
        Some("ExpiredIteratorException") => StreamError::ExpiredIterator,
        Some("TrimmedDataAccessException") => {
            StreamError::Trimmed(AwsFailure::from_sdk(&error).message)
        }
        _ => StreamError::Aws(AwsFailure::from_sdk(&error)),
    }
}

fn shard_of(shard: &aws_sdk_dynamodbstreams::types::Shard) -> Option<Shard> {
    Some(Shard {
        id: shard.shard_id()?.to_owned(),
        parent: shard.parent_shard_id().map(str::to_owned),
        starting: shard
            .sequence_number_range()
            .and_then(|r| r.starting_sequence_number())
            .and_then(SeqNo::parse),
        ending: shard
            .sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .and_then(SeqNo::parse),
    })
}

impl AwsStream {
    async fn describe_all(&self, filter: Option<ShardFilter>) -> Result<Vec<Shard>, StreamError> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        // DescribeStream pages hold at most 100 shards; a stream has at most a few thousand.
        for _ in 0..10_000 {
            let out = self
                .client
                .describe_stream()
                .stream_arn(&self.arn)
                .set_exclusive_start_shard_id(start.take())
                .set_shard_filter(filter.clone())
                .send()
                .await
                .map_err(stream_error)?;
            let description = out.stream_description();
            shards.extend(
                description
                    .map(|d| d.shards())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(shard_of),
            );
            match description.and_then(|d| d.last_evaluated_shard_id()) {
                Some(last) => start = Some(last.to_owned()),
                None => return Ok(shards),
            }
        }
        Err(StreamError::Aws(AwsFailure::synthetic(
            crate::error::ErrorClass::Fatal,
            "paging",
            "DescribeStream kept returning pages after 10000 calls",
        )))
    }
}

impl StreamSource for AwsStream {
    async fn shards(&self) -> Result<Vec<Shard>, StreamError> {
        self.describe_all(None).await
    }

    async fn children(&self, parent: &str) -> Result<Vec<Shard>, StreamError> {
        let filter = ShardFilter::builder()
            .r#type(ShardFilterType::ChildShards)
            .shard_id(parent)
            .build();
        let shards = self.describe_all(Some(filter)).await?;
        // Keep only real children, whatever the service did with the filter.
        Ok(shards
            .into_iter()
            .filter(|s| s.parent.as_deref() == Some(parent))
            .collect())
    }

    async fn iterator(&self, shard: &str, at: &StartAt) -> Result<String, StreamError> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.arn)
            .shard_id(shard);
        let request = match at {
            StartAt::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartAt::After(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq.as_str()),
            StartAt::At(seq) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(seq.as_str()),
        };
        let out = request
            .send()
            .await
            .map_err(|error| match stream_error(error) {
                // The shard is gone from the stream: everything in it was trimmed before it was read.
                StreamError::Aws(failure) if failure.kind == "not_found" => {
                    StreamError::Trimmed(format!(
                        "shard {shard} is no longer in the stream ({})",
                        failure.message
                    ))
                }
                other => other,
            })?;
        out.shard_iterator
            .ok_or_else(|| StreamError::Trimmed(format!("no iterator for shard {shard} at {at}")))
    }

    async fn read(&self, iterator: &str, limit: i32) -> Result<Page, StreamError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await
            .map_err(stream_error)?;
        let changes = out
            .records
            .unwrap_or_default()
            .into_iter()
            .map(record::decode_owned)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            changes,
            next: out.next_shard_iterator,
        })
    }
}
