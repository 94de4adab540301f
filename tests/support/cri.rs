//! A small CRI client: the kubelet's side of `runtime.v1` (the Container
//! Runtime Interface), spoken over gRPC on containerd's socket. The
//! messages are the subset of k8s.io/cri-api's api.proto these tests send
//! and read, declared with prost's derive under the proto's field numbers
//! (fields left out are skipped on decode and default on encode, as
//! proto3 allows), so the build needs no protoc. Not a test target.

use std::collections::HashMap;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// `NamespaceMode` of api.proto.
pub mod namespace_mode {
    pub const POD: i32 = 0;
    pub const CONTAINER: i32 = 1;
    pub const NODE: i32 = 2;
}

/// `ContainerState` of api.proto.
pub mod container_state {
    pub const CREATED: i32 = 0;
    pub const RUNNING: i32 = 1;
    pub const EXITED: i32 = 2;
    pub const UNKNOWN: i32 = 3;
}

/// `PodSandboxState` of api.proto.
pub mod sandbox_state {
    pub const READY: i32 = 0;
    pub const NOTREADY: i32 = 1;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    #[prost(string, tag = "1")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceOption {
    #[prost(int32, tag = "1")]
    pub network: i32,
    #[prost(int32, tag = "2")]
    pub pid: i32,
    #[prost(int32, tag = "3")]
    pub ipc: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
    #[prost(string, tag = "2")]
    pub runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// StopPodSandboxRequest and RemovePodSandboxRequest alike.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxIdRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(string, tag = "9")]
    pub runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<PodSandboxStatus>,
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    #[prost(string, tag = "1")]
    pub image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub args: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub envs: Vec<KeyValue>,
    #[prost(string, tag = "11")]
    pub log_path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    pub config: Option<ContainerConfig>,
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerResponse {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// StartContainerRequest and RemoveContainerRequest alike.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerIdRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatusRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(int64, tag = "6")]
    pub finished_at: i64,
    #[prost(int32, tag = "7")]
    pub exit_code: i32,
    #[prost(string, tag = "10")]
    pub reason: String,
    #[prost(string, tag = "11")]
    pub message: String,
    #[prost(string, tag = "15")]
    pub log_path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<ContainerStatus>,
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListedContainer {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(int32, tag = "6")]
    pub state: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<ListedContainer>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListedPodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "4")]
    pub state: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxResponse {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<ListedPodSandbox>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageStatusRequest {
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, repeated, tag = "2")]
    pub repo_tags: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub image: Option<Image>,
}

/// A blocking CRI client on one gRPC connection.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<Channel>,
}

const RUNTIME_SERVICE: &str = "/runtime.v1.RuntimeService/";
const IMAGE_SERVICE: &str = "/runtime.v1.ImageService/";

impl Client {
    /// Connects to the gRPC server on the unix socket `socket`.
    pub fn connect(socket: &str) -> Result<Client, tonic::transport::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let endpoint = Endpoint::from_shared(format!("unix://{socket}"))?;
        let channel = runtime.block_on(endpoint.connect())?;
        Ok(Client {
            runtime,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One unary call of `service` + `method`.
    fn call<Req, Resp>(&mut self, path: String, req: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let grpc = &mut self.grpc;
        self.runtime.block_on(async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let path =
                PathAndQuery::try_from(path).map_err(|e| tonic::Status::internal(e.to_string()))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(tonic::Request::new(req), path, codec)
                .await
                .map(tonic::Response::into_inner)
        })
    }

    fn runtime<Req, Resp>(&mut self, method: &str, req: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.call(format!("{RUNTIME_SERVICE}{method}"), req)
    }

    pub fn version(&mut self) -> Result<VersionResponse, tonic::Status> {
        let req = VersionRequest {
            version: "v1".into(),
        };
        self.runtime("Version", req)
    }

    pub fn run_pod_sandbox(
        &mut self,
        config: &PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, tonic::Status> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: runtime_handler.into(),
        };
        let resp: RunPodSandboxResponse = self.runtime("RunPodSandbox", req)?;
        Ok(resp.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(
        &mut self,
        id: &str,
    ) -> Result<PodSandboxStatusResponse, tonic::Status> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        self.runtime("PodSandboxStatus", req)
    }

    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = PodSandboxIdRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime::<_, Empty>("StopPodSandbox", req).map(drop)
    }

    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = PodSandboxIdRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime::<_, Empty>("RemovePodSandbox", req).map(drop)
    }

    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<ListedPodSandbox>, tonic::Status> {
        let resp: ListPodSandboxResponse =
            self.runtime("ListPodSandbox", ListPodSandboxRequest {})?;
        Ok(resp.items)
    }

    pub fn create_container(
        &mut self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let resp: CreateContainerResponse = self.runtime("CreateContainer", req)?;
        Ok(resp.container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = ContainerIdRequest {
            container_id: id.into(),
        };
        self.runtime::<_, Empty>("StartContainer", req).map(drop)
    }

    pub fn container_status(&mut self, id: &str) -> Result<ContainerStatusResponse, tonic::Status> {
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        self.runtime("ContainerStatus", req)
    }

    pub fn list_containers(&mut self) -> Result<Vec<ListedContainer>, tonic::Status> {
        let resp: ListContainersResponse =
            self.runtime("ListContainers", ListContainersRequest {})?;
        Ok(resp.containers)
    }

    /// The image the node has under `reference`, if any.
    pub fn image_status(&mut self, reference: &str) -> Result<Option<Image>, tonic::Status> {
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: reference.into(),
            }),
        };
        let resp: ImageStatusResponse = self.call(format!("{IMAGE_SERVICE}ImageStatus"), req)?;
        Ok(resp.image)
    }
}
