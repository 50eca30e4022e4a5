//! The `jsonl` sink: one record per line, as its canonical JSON, appended to a
//! file (synced to disk before the cursor moves) or written to stdout.
//!
//! The file is opened for each batch rather than held open, so log rotation
//! by renaming (logrotate without `copytruncate`) needs no signal: the next
//! batch creates a new file. It is created with mode 0600, since records name
//! agents and client addresses.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;

use super::{DeliveryError, Leaf};

#[derive(Debug)]
pub(super) struct JsonlSink {
    /// `None` is stdout.
    path: Option<PathBuf>,
    /// A write failed part-way, so the output may end in half a line: the
    /// next batch starts on a fresh line, and readers skip the broken one
    /// (its record comes again whole).
    torn: bool,
}

impl JsonlSink {
    pub(super) fn new(path: Option<PathBuf>) -> Self {
        JsonlSink { path, torn: false }
    }

    pub(super) async fn deliver(&mut self, leaves: &[Leaf]) -> Result<(), DeliveryError> {
        let mut text =
            String::with_capacity(leaves.iter().map(|(_, r)| r.len() + 1).sum::<usize>() + 1);
        if self.torn {
            text.push('\n');
        }
        for (_, record) in leaves {
            text.push_str(record);
            text.push('\n');
        }
        self.torn = true;
        match &self.path {
            Some(path) => {
                let mut options = tokio::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                options.mode(0o600);
                let mut file = options.open(path).await?;
                file.write_all(text.as_bytes()).await?;
                file.sync_data().await?;
            }
            None => {
                let mut out = tokio::io::stdout();
                out.write_all(text.as_bytes()).await?;
                out.flush().await?;
            }
        }
        self.torn = false;
        Ok(())
    }
}
