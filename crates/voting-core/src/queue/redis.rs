//! The queue on Redis Streams: stream `votes`, consumer group `workers`, dead letters in
//! `votes:dead`.
//!
//! Connections are rebuilt rather than trusted: after a failover the old address may answer
//! `READONLY` (a demoted master) or nothing at all, and the stock connection manager recovers
//! from neither. Every error drops the connection it happened on, and the next command dials
//! again (through HAProxy, that reaches the current master). A blocking `XREADGROUP` gets a
//! connection of its own with a response timeout longer than its block, so it never times out
//! the commands multiplexed with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::Mutex;

use super::group_commit::{BatchWriter, GroupCommit};
use super::{
    ConsumerGroup, ConsumerSettings, Delivery, Durability, QueueConsumer, QueueError, VoteQueue, decode_vote,
    encode_vote,
};
use crate::domain::{QueuePosition, Vote};

/// The stream every vote is appended to.
pub const STREAM: &str = "votes";
/// The consumer group of the workers.
pub const GROUP: &str = "workers";
/// Where entries that are not votes are moved to.
pub const DEAD_LETTER_STREAM: &str = "votes:dead";
/// Bound on the dead-letter stream, so garbage cannot fill Redis.
const DEAD_LETTER_MAX_LEN: usize = 100_000;

/// How long to wait to connect, and for a reply to an ordinary command.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The Redis queue, cheap to clone: clones share one multiplexed connection and one
/// group-commit task.
#[derive(Debug, Clone)]
pub struct RedisQueue {
    connection: Arc<SharedConnection>,
    appender: GroupCommit,
}

impl RedisQueue {
    /// Does not connect: the first command does, so a service starts while Redis is down.
    /// Must be called within a Tokio runtime: it starts the group-commit task.
    pub fn new(url: &str, durability: Durability, replication_timeout: Duration) -> Result<Self, QueueError> {
        let client = Client::open(url).map_err(QueueError::unavailable)?;
        let connection = Arc::new(SharedConnection::new(client, RESPONSE_TIMEOUT));
        let appender =
            GroupCommit::spawn(Pipeline { connection: connection.clone(), durability, replication_timeout });
        Ok(Self { connection, appender })
    }
}

/// Writes a batch as one pipeline of `XADD`s; with `replicated`, one `WAIT` at the end covers
/// every vote before it.
struct Pipeline {
    connection: Arc<SharedConnection>,
    durability: Durability,
    replication_timeout: Duration,
}

impl BatchWriter for Pipeline {
    async fn write(&mut self, votes: &[Vote]) -> Result<Vec<Result<QueuePosition, QueueError>>, QueueError> {
        let mut pipe = redis::pipe();
        for vote in votes {
            let add = pipe.cmd("XADD").arg(STREAM).arg("*");
            for (field, value) in encode_vote(vote) {
                add.arg(field).arg(value);
            }
        }
        if self.durability == Durability::Replicated {
            pipe.cmd("WAIT").arg(1).arg(self.replication_timeout.as_millis() as u64);
        }
        let replies: Vec<Value> = self.connection.query_pipeline(&pipe).await?;
        let replicated = match self.durability {
            Durability::Fast => true,
            Durability::Replicated => matches!(replies.last(), Some(Value::Int(n)) if *n >= 1),
        };
        Ok(replies
            .iter()
            .take(votes.len())
            .map(|reply| match text(reply) {
                Some(_) if !replicated => Err(QueueError::Indeterminate(anyhow!(
                    "no replica confirmed the vote within {:?}",
                    self.replication_timeout
                ))),
                Some(id) => parse_id(&id),
                None => Err(QueueError::unavailable(anyhow!("XADD answered {reply:?}"))),
            })
            .collect())
    }
}

impl VoteQueue for RedisQueue {
    async fn publish(&self, vote: &Vote) -> Result<QueuePosition, QueueError> {
        self.appender.append(vote).await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let _: String = self.connection.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn close(&self) {
        self.appender.close().await;
    }
}

/// The consumer group `workers` of the stream, cheap to clone: what a worker joins.
#[derive(Debug, Clone)]
pub struct RedisConsumerGroup {
    client: Client,
    /// For the readiness check.
    connection: Arc<SharedConnection>,
}

impl RedisConsumerGroup {
    /// Does not connect: joining does, so a worker starts while Redis is down.
    pub fn new(url: &str) -> Result<Self, QueueError> {
        let client = Client::open(url).map_err(QueueError::unavailable)?;
        let connection = Arc::new(SharedConnection::new(client.clone(), RESPONSE_TIMEOUT));
        Ok(Self { client, connection })
    }
}

impl ConsumerGroup for RedisConsumerGroup {
    type Consumer = RedisConsumer;

    async fn join(&self, settings: ConsumerSettings) -> Result<RedisConsumer, QueueError> {
        let blocking = SharedConnection::new(self.client.clone(), settings.block + RESPONSE_TIMEOUT);
        let consumer = RedisConsumer {
            commands: SharedConnection::new(self.client.clone(), RESPONSE_TIMEOUT),
            blocking,
            settings,
            claim_cursor: "0-0".to_owned(),
            next_claim_at: Instant::now(),
        };
        consumer.ensure_group().await?;
        Ok(consumer)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let _: String = self.connection.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// One worker's view of the consumer group.
#[derive(Debug)]
pub struct RedisConsumer {
    commands: SharedConnection,
    /// Only for `XREADGROUP ... BLOCK`.
    blocking: SharedConnection,
    settings: ConsumerSettings,
    /// Where the scan of pending entries for `XAUTOCLAIM` goes on from.
    claim_cursor: String,
    /// When to look for abandoned entries again; a full scan each `claim_idle / 2` suffices.
    next_claim_at: Instant,
}

impl RedisConsumer {
    /// Creates the group from the stream's start, so votes queued before any worker ran count.
    async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut create = redis::cmd("XGROUP");
        create.arg("CREATE").arg(STREAM).arg(GROUP).arg("0").arg("MKSTREAM");
        match self.commands.query::<()>(&create).await {
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    async fn claim_abandoned(&mut self) -> Result<Vec<Delivery>, QueueError> {
        let mut claim = redis::cmd("XAUTOCLAIM");
        claim
            .arg(STREAM)
            .arg(GROUP)
            .arg(&self.settings.name)
            .arg(self.settings.claim_idle.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(self.settings.batch_size);
        let reply: StreamAutoClaimReply = self.commands.query(&claim).await?;
        if reply.next_stream_id == "0-0" {
            self.next_claim_at = Instant::now() + self.settings.claim_idle / 2;
        }
        self.claim_cursor = reply.next_stream_id;
        if !reply.claimed.is_empty() {
            tracing::warn!(entries = reply.claimed.len(), "claimed entries abandoned by another consumer");
        }
        reply.claimed.into_iter().map(delivery).collect()
    }
}

impl QueueConsumer for RedisConsumer {
    async fn next_batch(&mut self) -> Result<Vec<Delivery>, QueueError> {
        if Instant::now() >= self.next_claim_at {
            let claimed = self.claim_abandoned().await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&self.settings.name)
            .arg("COUNT")
            .arg(self.settings.batch_size)
            .arg("BLOCK")
            .arg(self.settings.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">");
        let reply: Option<StreamReadReply> = match self.blocking.query(&read).await {
            // The group vanishes when Redis comes back empty (no persistence, or a fresh
            // replica promoted): make it again rather than stall.
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).map(delivery).collect()
    }

    async fn ack(&mut self, positions: &[QueuePosition]) -> Result<(), QueueError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(STREAM).arg(GROUP);
        for position in positions {
            ack.arg(position.to_string());
        }
        let _: u64 = self.commands.query(&ack).await?;
        Ok(())
    }

    async fn dead_letter(&mut self, entry: &Delivery, reason: &str) -> Result<(), QueueError> {
        let mut add = redis::cmd("XADD");
        add.arg(DEAD_LETTER_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(DEAD_LETTER_MAX_LEN)
            .arg("*")
            .arg("entry")
            .arg(entry.position.to_string())
            .arg("reason")
            .arg(reason);
        if let Err(malformed) = &entry.payload {
            for (field, value) in &malformed.fields {
                add.arg(format!("field:{field}")).arg(value);
            }
        }
        let _: String = self.commands.query(&add).await?;
        self.ack(&[entry.position]).await
    }

    async fn trim(&mut self) -> Result<(), QueueError> {
        // Read the group's last delivered id before the oldest pending entry: anything
        // delivered in between has a greater id than both, so the threshold never passes it.
        let groups: Vec<std::collections::HashMap<String, Value>> =
            self.commands.query(redis::cmd("XINFO").arg("GROUPS").arg(STREAM)).await?;
        let Some(group) = groups.iter().find(|g| g.get("name").and_then(text).as_deref() == Some(GROUP))
        else {
            return Ok(());
        };
        let last_delivered: QueuePosition = group
            .get("last-delivered-id")
            .and_then(text)
            .ok_or_else(|| QueueError::unavailable(anyhow!("XINFO GROUPS without last-delivered-id")))?
            .parse()
            .map_err(QueueError::unavailable)?;
        let pending: Value = self.commands.query(redis::cmd("XPENDING").arg(STREAM).arg(GROUP)).await?;
        let oldest_pending = match pending {
            Value::Array(summary) if summary.len() >= 2 => text(&summary[1]).and_then(|id| id.parse().ok()),
            _ => None,
        };
        let after_last_delivered =
            QueuePosition { major: last_delivered.major, minor: last_delivered.minor + 1 };
        let keep_from =
            oldest_pending.map_or(after_last_delivered, |p: QueuePosition| p.min(after_last_delivered));
        let _: u64 = self
            .commands
            .query(redis::cmd("XTRIM").arg(STREAM).arg("MINID").arg("~").arg(keep_from.to_string()))
            .await?;
        Ok(())
    }
}

/// A multiplexed connection that is dropped on any error and dialled again on next use.
#[derive(Debug)]
struct SharedConnection {
    client: Client,
    config: AsyncConnectionConfig,
    /// The live connection, if any, and a generation so concurrent failures of one
    /// connection drop it once, not also the fresh one another task just made.
    state: Mutex<(u64, Option<MultiplexedConnection>)>,
}

impl SharedConnection {
    fn new(client: Client, response_timeout: Duration) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        Self { client, config, state: Mutex::new((0, None)) }
    }

    async fn connection(&self) -> Result<(u64, MultiplexedConnection), QueueError> {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.1 {
            return Ok((state.0, connection.clone()));
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(QueueError::unavailable)?;
        state.0 += 1;
        state.1 = Some(connection.clone());
        Ok((state.0, connection))
    }

    async fn forget(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.0 == generation {
            state.1 = None;
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, QueueError> {
        let (generation, mut connection) = self.connection().await?;
        let reply = cmd.query_async(&mut connection).await;
        self.check(generation, reply).await
    }

    async fn query_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, QueueError> {
        let (generation, mut connection) = self.connection().await?;
        let reply = pipe.query_async(&mut connection).await;
        self.check(generation, reply).await
    }
}

impl SharedConnection {
    /// Drops the connection on any error. An error reply from the server (`READONLY`,
    /// `NOREPLICAS`, ...) means the command was refused; anything else (a broken connection,
    /// a timeout) may have struck after Redis executed it.
    async fn check<T>(&self, generation: u64, reply: redis::RedisResult<T>) -> Result<T, QueueError> {
        match reply {
            Ok(value) => Ok(value),
            Err(e) => {
                self.forget(generation).await;
                if e.code().is_some() {
                    Err(QueueError::unavailable(e))
                } else {
                    Err(QueueError::Indeterminate(e.into()))
                }
            }
        }
    }
}

fn parse_id(id: &str) -> Result<QueuePosition, QueueError> {
    id.parse().map_err(|e| QueueError::unavailable(anyhow!("stream id `{id}`: {e}")))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn delivery(entry: StreamId) -> Result<Delivery, QueueError> {
    let position = parse_id(&entry.id)?;
    let mut fields: Vec<(String, String)> =
        entry.map.iter().map(|(k, v)| (k.clone(), text(v).unwrap_or_else(|| format!("{v:?}")))).collect();
    fields.sort();
    Ok(Delivery { position, payload: decode_vote(&fields) })
}
