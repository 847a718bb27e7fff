//! Published pathway versions, kept in the log.
//!
//! A pathway version is published the first time an engine starts with it: its source
//! text goes into the stream `pathway/<id>` as a `pathway.published` record. From then on
//! that version is immutable — an engine given a different text under the same id and
//! version refuses to start — and it stays available to the instances pinned to it even
//! after its file is gone: the engine compiles it again from the log.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use parcours_store::{Appended, Codec, Commit, EventStore, NewRecord, StreamWrite};

use crate::codec;
use crate::engine::RuntimeError;

/// Record type of a publication.
pub const PUBLISHED: &str = "pathway.published";

/// One published pathway version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// Pathway id.
    pub id: String,
    /// Version.
    pub version: u32,
    /// The file it was published from.
    pub file: String,
    /// XXH3-128 of the text, hex.
    pub digest: String,
    /// The source text.
    pub text: String,
}

/// Compiles a version published into the log (by this process or another) into the
/// pathway it runs: the engine asks it for versions it meets in the log but was not
/// started with ([`crate::EngineConfig::compile_published`]). The runtime does not compile
/// pathway files itself; the binary hands it the compiler.
#[derive(Clone)]
pub struct Compiler(std::sync::Arc<CompileFn>);

/// What a [`Compiler`] calls.
type CompileFn =
    dyn Fn(&Published) -> Result<parcours_core::model::CompiledPathway, String> + Send + Sync;

impl Compiler {
    /// From a function compiling a publication's text, or saying why it cannot.
    pub fn new(
        f: impl Fn(&Published) -> Result<parcours_core::model::CompiledPathway, String>
        + Send
        + Sync
        + 'static,
    ) -> Compiler {
        Compiler(std::sync::Arc::new(f))
    }

    /// Compile one publication.
    pub fn compile(&self, p: &Published) -> Result<parcours_core::model::CompiledPathway, String> {
        (self.0)(p)
    }
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiler")
    }
}

/// The digest of a pathway's source text.
pub fn digest(text: &str) -> String {
    format!("{:032x}", xxh3_128(text.as_bytes()))
}

/// What publishing a version did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publication {
    /// First publication of this version.
    New,
    /// Already published with the same text.
    Unchanged,
}

/// Why a version cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The version was published with another text.
    #[error(
        "{id} v{version} was published from {published_file} with different content than \
         {file}: a published version never changes; give the new text a new version"
    )]
    Changed {
        /// Pathway id.
        id: String,
        /// Version.
        version: u32,
        /// The file given now.
        file: String,
        /// The file it was published from.
        published_file: String,
    },
    /// The log failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Every published version of every pathway, in publication order: the records of the
/// `pathway/…` streams only, whatever the size of the rest of the log.
pub async fn published<S: EventStore>(store: &S) -> Result<Vec<Published>, RuntimeError> {
    let records = store
        .read_streams_by_prefix(&codec::pathway_stream(""))
        .await?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        if r.record.record_type == PUBLISHED {
            out.push(serde_json::from_slice(&r.record.payload)?);
        }
    }
    Ok(out)
}

/// What publishing `text` as `id` v`version` would do, without publishing it: new,
/// already published with the same text, or refused (published with another text).
pub async fn check<S: EventStore>(
    store: &S,
    id: &str,
    version: u32,
    file: &str,
    text: &str,
) -> Result<Publication, PublishError> {
    look_up(store, id, version, file, text)
        .await
        .map(|(publication, _)| publication)
}

/// [`check`], and the number of records of the pathway's stream.
async fn look_up<S: EventStore>(
    store: &S,
    id: &str,
    version: u32,
    file: &str,
    text: &str,
) -> Result<(Publication, u64), PublishError> {
    let existing = store
        .read_stream(&codec::pathway_stream(id), 0)
        .await
        .map_err(RuntimeError::from)?;
    let sum = digest(text);
    for r in &existing {
        let p: Published = serde_json::from_slice(&r.record.payload).map_err(RuntimeError::from)?;
        if p.version == version {
            if p.digest == sum {
                return Ok((Publication::Unchanged, existing.len() as u64));
            }
            return Err(PublishError::Changed {
                id: id.to_string(),
                version,
                file: file.to_string(),
                published_file: p.file,
            });
        }
    }
    Ok((Publication::New, existing.len() as u64))
}

/// Publish a version (see the module docs).
pub async fn publish<S: EventStore>(
    store: &S,
    id: &str,
    version: u32,
    file: &str,
    text: &str,
    at: jiff::Timestamp,
) -> Result<Publication, PublishError> {
    let (publication, records) = look_up(store, id, version, file, text).await?;
    if publication == Publication::Unchanged {
        return Ok(publication);
    }
    let sum = digest(text);
    let p = Published {
        id: id.to_string(),
        version,
        file: file.to_string(),
        digest: sum.clone(),
        text: text.to_string(),
    };
    let record = NewRecord {
        id: format!("pathway:{id}:v{version}:{sum}"),
        record_type: PUBLISHED.into(),
        type_version: 1,
        codec: Codec::Json,
        tenant: String::new(),
        subject: String::new(),
        occurred_at: at,
        cause: None,
        payload: serde_json::to_vec(&p).map_err(RuntimeError::from)?,
    };
    let commit = Commit {
        writes: vec![StreamWrite {
            stream: codec::pathway_stream(id),
            expected_version: records,
            records: vec![record],
        }],
        ..Commit::default()
    };
    match store.append(commit).await.map_err(RuntimeError::from)? {
        Appended::Committed { .. } => Ok(Publication::New),
        Appended::Duplicate => Ok(Publication::Unchanged),
    }
}
