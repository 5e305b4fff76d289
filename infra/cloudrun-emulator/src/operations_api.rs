//! `google.longrunning.Operations`: GetOperation, WaitOperation,
//! ListOperations, DeleteOperation. CancelOperation answers UNIMPLEMENTED
//! (cancel an execution with CancelExecution, as with Cloud Run).

use std::sync::Arc;
use std::time::Duration;

use googleapis_tonic_google_longrunning::google::longrunning::{
    DeleteOperationRequest, GetOperationRequest, ListOperationsRequest, ListOperationsResponse,
    Operation, WaitOperationRequest,
};
use tonic::{Request, Response, Status};

use crate::grpc::Empty;
use crate::grpc::operations_server::Operations;
use crate::lro;
use crate::names::{self, LocationName};
use crate::store::{self, OperationRecord, Store};

/// The Operations service over the shared store.
#[derive(Debug, Clone)]
pub(crate) struct OperationsApi {
    store: Arc<Store>,
}

impl OperationsApi {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn get(&self, name: &str) -> Result<Operation, Status> {
        names::parse_operation_name(name)?;
        let state = self.store.lock();
        let record = state
            .operations
            .get(name)
            .ok_or_else(|| Status::not_found(format!("operation {name} does not exist")))?;
        Ok(record.to_proto(name))
    }
}

#[tonic::async_trait]
impl Operations for OperationsApi {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let request = request.into_inner();
        // `name` is the operations' parent, `projects/{p}/locations/{l}`.
        let parent = LocationName::parse(&request.name)?;
        let prefix = format!("{parent}/operations/");
        let mut operations: Vec<(u64, Operation)> = {
            let state = self.store.lock();
            state
                .operations
                .iter()
                .filter(|(name, _)| name.starts_with(&prefix))
                .map(|(name, record)| (record.seq(), record.to_proto(name)))
                .collect()
        };
        operations.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        let operations = operations.into_iter().map(|(_, op)| op).collect();
        let (operations, next_page_token) =
            store::paginate(operations, request.page_size, &request.page_token)?;
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token,
            unreachable: Vec::new(),
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        Ok(Response::new(self.get(&request.get_ref().name)?))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let name = &request.get_ref().name;
        names::parse_operation_name(name)?;
        match self.store.lock().operations.remove(name) {
            Some(_) => Ok(Response::new(())),
            None => Err(Status::not_found(format!(
                "operation {name} does not exist"
            ))),
        }
    }

    /// Blocks until the operation is done or `timeout` passes, then returns
    /// it as it is (done or not), as Google's Operations service does. With
    /// no timeout it waits until done, bounded only by the client's deadline.
    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        if !self.store.config.wait_operation {
            return Err(Status::unimplemented(
                "WaitOperation is not served (--no-wait-operation)",
            ));
        }
        let request = request.into_inner();
        let name = request.name;
        let timeout = match request.timeout {
            None => None,
            Some(t) if t.seconds < 0 || t.nanos < 0 || t.nanos >= 1_000_000_000 => {
                return Err(Status::invalid_argument(
                    "timeout must be a non-negative duration",
                ));
            }
            Some(t) => Some(Duration::new(t.seconds as u64, t.nanos as u32)),
        };
        names::parse_operation_name(&name)?;
        let entry = {
            let state = self.store.lock();
            match state.operations.get(&name) {
                None => {
                    return Err(Status::not_found(format!(
                        "operation {name} does not exist"
                    )));
                }
                Some(OperationRecord::Done { operation, .. }) => {
                    return Ok(Response::new(operation.clone()));
                }
                Some(OperationRecord::Execution { entry, .. }) => Arc::clone(entry),
            }
        };
        // Woken by the execution's watch channel, not by polling.
        match timeout {
            Some(timeout) => {
                let _ = tokio::time::timeout(timeout, entry.wait_done()).await;
            }
            None => {
                entry.wait_done().await;
            }
        }
        // Built from the entry, not re-read: a DeleteOperation meanwhile
        // should not turn a finished wait into NOT_FOUND.
        Ok(Response::new(lro::execution_operation(
            name,
            &entry.snapshot(),
        )))
    }
}
