//! What meta asks of volume servers, behind a trait so that the meta logic can be tested without them.

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use hoard_proto::v1;
use hoard_types::ExtentId;

/// Who answers at a volume server's address: its node id and the disks it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    pub node_id: String,
    pub disks: Vec<String>,
}

pub trait VolumeOps: Send + Sync + 'static {
    /// Creates one extent on the volume server at `address`.
    fn create_extent(
        &self,
        address: String,
        req: v1::CreateExtentRequest,
    ) -> BoxFuture<'static, Result<(), String>>;

    /// Who serves at `address` now; an error when nothing answers there in a couple of seconds.
    fn whois(&self, address: String) -> BoxFuture<'static, Result<ServerIdentity, String>> {
        Box::pin(async move { Err(format!("{address}: not asked")) })
    }

    /// Every valid block record of an extent at `address`.
    fn read_index(
        &self,
        address: String,
        extent: ExtentId,
    ) -> BoxFuture<'static, Result<Vec<v1::BlockRecord>, String>> {
        let _ = extent;
        Box::pin(async move { Err(format!("{address}: not asked")) })
    }

    /// One fragment of a block, checked against its crc32c on the server.
    fn read_fragment(
        &self,
        address: String,
        req: v1::ReadFragmentRequest,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        let _ = req;
        Box::pin(async move { Err(format!("{address}: not asked")) })
    }
}

/// [`VolumeOps`] over gRPC.
#[derive(Default)]
pub struct GrpcVolumeOps {
    clients: hoard_net::VolumeClients,
}

impl VolumeOps for GrpcVolumeOps {
    fn create_extent(
        &self,
        address: String,
        req: v1::CreateExtentRequest,
    ) -> BoxFuture<'static, Result<(), String>> {
        let client = self.clients.get(&address);
        Box::pin(async move {
            let mut c = client?;
            let mut r = tonic::Request::new(req);
            r.set_timeout(std::time::Duration::from_secs(10));
            c.create_extent(r)
                .await
                .map(|_| ())
                .map_err(|s| format!("{address}: {}", s.message()))
        })
    }

    fn whois(&self, address: String) -> BoxFuture<'static, Result<ServerIdentity, String>> {
        let client = self.clients.get(&address);
        Box::pin(async move {
            let mut c = client?;
            let mut r = tonic::Request::new(v1::InventoryRequest {});
            r.set_timeout(std::time::Duration::from_secs(2));
            let inv = tokio::time::timeout(std::time::Duration::from_secs(3), c.inventory(r))
                .await
                .map_err(|_| format!("{address}: no answer"))?
                .map_err(|s| format!("{address}: {}", s.message()))?
                .into_inner();
            Ok(ServerIdentity {
                node_id: inv.node_id,
                disks: inv.disks.into_iter().map(|d| d.disk_id).collect(),
            })
        })
    }

    fn read_index(
        &self,
        address: String,
        extent: ExtentId,
    ) -> BoxFuture<'static, Result<Vec<v1::BlockRecord>, String>> {
        let client = self.clients.get(&address);
        Box::pin(async move {
            let mut c = client?;
            let mut stream = c
                .read_index(v1::ReadIndexRequest {
                    extent: Some(extent.into()),
                })
                .await
                .map_err(|s| format!("{address}: {}", s.message()))?
                .into_inner();
            let mut out = Vec::new();
            while let Some(msg) = stream.next().await {
                let msg = msg.map_err(|s| format!("{address}: {}", s.message()))?;
                out.extend(msg.records);
            }
            Ok(out)
        })
    }

    fn read_fragment(
        &self,
        address: String,
        req: v1::ReadFragmentRequest,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        let client = self.clients.get(&address);
        Box::pin(async move {
            let mut c = client?;
            c.read_fragment(req)
                .await
                .map(|r| r.into_inner().fragment)
                .map_err(|s| format!("{address}: {}", s.message()))
        })
    }
}
