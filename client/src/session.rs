//! Read-your-writes across nodes: a session carries the tokens of the
//! writes made (or seen) through it into every read.

use std::{collections::BTreeMap, sync::Mutex};

use crate::{
    types::{Entry, ReadOptions, Token, WriteOptions, Written},
    Client, Error,
};

/// A client that remembers, per origin node, the newest write token it has
/// seen, and passes them all with every read: its reads see its writes
/// and never go back in time, whichever node answers. Keeps at most one
/// token per node of the cluster.
#[derive(Debug)]
pub struct Session {
    client: Client,
    tokens: Mutex<BTreeMap<String, (u64, Token)>>,
}

impl Session {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            tokens: Mutex::new(BTreeMap::new()),
        }
    }

    /// Remembers `token` (from a write made elsewhere, say) if it is newer
    /// than the one kept for its node.
    pub fn saw(&self, token: &Token) {
        let Some((origin, seq)) = token.position() else {
            return;
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let kept = tokens
            .entry(origin.to_string())
            .or_insert((0, token.clone()));
        if seq >= kept.0 {
            *kept = (seq, token.clone());
        }
    }

    /// The tokens a read passes.
    pub fn tokens(&self) -> Vec<Token> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.values().map(|(_, t)| t.clone()).collect()
    }

    /// [`Client::write`], remembering its token.
    pub async fn write(
        &self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        opts: WriteOptions,
    ) -> Result<Written, Error> {
        let w = self.client.write(key, value, opts).await?;
        self.saw(&w.token);
        Ok(w)
    }

    /// [`Client::delete`], remembering its token.
    pub async fn delete(
        &self,
        key: impl Into<String>,
        opts: WriteOptions,
    ) -> Result<Written, Error> {
        let w = self.client.delete(key, opts).await?;
        self.saw(&w.token);
        Ok(w)
    }

    /// [`Client::read`] after every write this session has seen.
    pub async fn read(&self, key: impl Into<String>) -> Result<Option<Entry>, Error> {
        let opts = ReadOptions {
            after: self.tokens(),
            ..ReadOptions::default()
        };
        self.client.read(key, opts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_keeps_the_newest_token_per_node() {
        let client = Client::builder(["http://127.0.0.1:1"]).build().unwrap();
        let s = client.session();
        for t in ["t1.n1.5", "t1.n2.3", "t1.n1.4", "t1.n1.9", "junk"] {
            s.saw(&Token(t.into()));
        }
        let kept: Vec<String> = s.tokens().into_iter().map(|t| t.0).collect();
        assert_eq!(kept, ["t1.n1.9", "t1.n2.3"]);
    }
}
