//! The participants' circuit breakers, as this process sees them.

use axum::extract::State;
use axum::Json;
use engine::circuit_breaker::ParticipantCircuit;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Every participant this process has sent commands to, with its circuit.
#[derive(Debug, Serialize, ToSchema)]
pub struct Participants {
    pub participants: Vec<ParticipantCircuit>,
}

/// The participants' circuits: closed, open (commands held or failed fast) or half-open
/// (one probe out). Each process keeps its own, judged from the replies it handles.
#[utoipa::path(get, path = "/participants", tag = "participants", responses((status = 200, body = Participants)))]
pub async fn list(State(state): State<AppState>) -> Json<Participants> {
    Json(Participants { participants: state.coordinator.circuit_breakers().circuits() })
}
