//! The task service's ttrpc face (task API v2): create, start, wait,
//! kill, delete, state, pids, connect, close_io, shutdown. Everything else
//! answers Unimplemented (the trait's defaults).

use containerd_shim::api;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{TtrpcContext, TtrpcResult};

use super::{no_exec, timestamp, Service, Status};
use crate::error::Error;

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = Service::create(self, &req)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        no_exec(&req.exec_id)?;
        let pid = Service::start(self, &req.id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        no_exec(&req.exec_id)?;
        let (_, cell) = self.lookup(&req.id)?;
        let exit = cell.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        no_exec(&req.exec_id)?;
        Service::kill(self, &req.id, req.signal)?;
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        no_exec(&req.exec_id)?;
        let (pid, exit) = Service::delete(self, &req.id)?;
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        no_exec(&req.exec_id)?;
        let containers = self.containers();
        let c = containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let status = match c.status() {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        };
        let exit = c.exit.get();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: c.pid,
            status: status.into(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map_or_else(MessageField::none, |e| timestamp(e.at)),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let processes = self
            .processes(&req.id)?
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.lookup(&req.id).map_or(0, |(pid, _)| pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        no_exec(&req.exec_id)?;
        let containers = self.containers();
        let c = containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        if req.stdin {
            if let Some(stdin) = &c.stdin {
                stdin.close();
            }
        }
        Ok(api::Empty::default())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.containers().is_empty() {
            log::info!("shutdown: no containers left");
            self.0.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
