//! `meshkv.v1.KV`: the client API.

use std::{sync::Arc, time::Instant};

use tonic::{Request, Response, Status};

use crate::{
    api::validate,
    proto::{self, kv_server::Kv},
    storage::{codec::version_to_proto, Store, WriterHandle},
};

/// Serves Write, Read and Delete on one node.
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

#[tonic::async_trait]
impl Kv for KvService {
    async fn write(
        &self,
        request: Request<proto::WriteRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        validate::key(&req.key)?;
        validate::value(req.value.len(), self.max_value_bytes)?;
        let version = self.writer.write(req.key, Some(req.value)).await?;
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
            Some(e) => proto::ReadResponse {
                found: e.value.is_some(),
                version: Some(version_to_proto(&e.version)),
                value: e.value.unwrap_or_default(),
            },
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        validate::key(&req.key)?;
        let version = self.writer.write(req.key, None).await?;
        crate::metrics::request("delete", started.elapsed());
        Ok(Response::new(proto::DeleteResponse {
            version: Some(version_to_proto(&version)),
        }))
    }
}
