//! `meshkv.v1.KV`: the client API.

use std::{sync::Arc, time::Instant};

use tonic::{Request, Response, Status};

use crate::{
    api::validate,
    error::Error,
    proto::{self, kv_server::Kv},
    security::{auth, Role},
    storage::{Store, WriterHandle},
    version::version_to_proto,
};

/// The most writes one WriteBatch may carry.
pub const MAX_WRITE_BATCH: usize = 10_000;

/// Serves Write, Read, Delete and WriteBatch on one node.
#[derive(Debug)]
pub struct KvService {
    store: Arc<Store>,
    writer: WriterHandle,
    max_value_bytes: usize,
}

impl KvService {
    /// A service over `store`, writing through `writer`.
    pub fn new(store: Arc<Store>, writer: WriterHandle, max_value_bytes: usize) -> Self {
        Self {
            store,
            writer,
            max_value_bytes,
        }
    }
}

/// A client's write, checked: its key and the bytes it stores.
pub fn check_write(
    req: proto::WriteRequest,
    max_value_bytes: usize,
) -> Result<(String, Vec<u8>), Error> {
    validate::key(&req.key)?;
    let value = payload(req.value, req.text)?;
    validate::value(value.len(), max_value_bytes)?;
    Ok((req.key, value))
}

/// A key and what to store under it (`None`: delete), as the writer takes it.
pub type Write = (String, Option<Vec<u8>>);

/// A client's batch, checked as a whole: 1..=10000 writes, each valid; an
/// error names the first bad write.
pub fn check_batch(
    req: proto::WriteBatchRequest,
    max_value_bytes: usize,
) -> Result<Vec<Write>, Error> {
    if req.writes.is_empty() || req.writes.len() > MAX_WRITE_BATCH {
        return Err(Error::InvalidArgument(format!(
            "a batch holds {} writes; it must hold 1..={MAX_WRITE_BATCH}",
            req.writes.len()
        )));
    }
    req.writes
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let (key, value) = check_write(w, max_value_bytes)
                .map_err(|e| Error::InvalidArgument(format!("write {i}: {e}")))?;
            Ok((key, Some(value)))
        })
        .collect()
}

/// The bytes a write stores: its `value`, or its `text` as UTF-8.
fn payload(value: Vec<u8>, text: String) -> Result<Vec<u8>, Error> {
    match (value.is_empty(), text.is_empty()) {
        (_, true) => Ok(value),
        (true, false) => Ok(text.into_bytes()),
        (false, false) => Err(Error::InvalidArgument(
            "both value and text are set; a write carries one of them".into(),
        )),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn write(
        &self,
        request: Request<proto::WriteRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let started = Instant::now();
        auth::require(&request, Role::Write)?;
        let (key, value) = check_write(request.into_inner(), self.max_value_bytes)?;
        let version = self.writer.write(key, Some(value)).await?;
        crate::metrics::request("write", started.elapsed());
        Ok(Response::new(proto::WriteResponse {
            version: Some(version_to_proto(&version)),
        }))
    }

    async fn read(
        &self,
        request: Request<proto::ReadRequest>,
    ) -> Result<Response<proto::ReadResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        validate::key(&req.key)?;
        let entry = self.store.get(&req.key)?;
        crate::metrics::request("read", started.elapsed());
        Ok(Response::new(match entry {
            None => proto::ReadResponse::default(),
            Some(e) => {
                let found = e.value.is_some();
                let mut resp = proto::ReadResponse {
                    found,
                    version: Some(version_to_proto(&e.version)),
                    ..Default::default()
                };
                let value = e.value.unwrap_or_default();
                if req.as_text && found {
                    match String::from_utf8(value) {
                        Ok(text) => resp.text = text,
                        Err(e) => {
                            resp.binary = true;
                            resp.value = e.into_bytes();
                        }
                    }
                } else {
                    resp.value = value;
                }
                resp
            }
        }))
    }

    async fn write_batch(
        &self,
        request: Request<proto::WriteBatchRequest>,
    ) -> Result<Response<proto::WriteBatchResponse>, Status> {
        let started = Instant::now();
        auth::require(&request, Role::Write)?;
        let writes = check_batch(request.into_inner(), self.max_value_bytes)?;
        let versions = self.writer.write_batch(writes).await?;
        crate::metrics::request("write_batch", started.elapsed());
        Ok(Response::new(proto::WriteBatchResponse {
            versions: versions.iter().map(version_to_proto).collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let started = Instant::now();
        auth::require(&request, Role::Write)?;
        let req = request.into_inner();
        validate::key(&req.key)?;
        let version = self.writer.write(req.key, None).await?;
        crate::metrics::request("delete", started.elapsed());
        Ok(Response::new(proto::DeleteResponse {
            version: Some(version_to_proto(&version)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_carries_value_or_text() {
        assert_eq!(payload(b"v".to_vec(), String::new()).unwrap(), b"v");
        assert_eq!(payload(vec![], "héllo".into()).unwrap(), "héllo".as_bytes());
        assert!(payload(vec![], String::new()).unwrap().is_empty());
        let err = payload(b"v".to_vec(), "t".into()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("value and text"), "{err}");
    }
}
