//! The agent's answers read as the RMS core's types (until both take them from one crate).

use livemig_agent::capacity::{Answer, Granted};

#[test]
fn capacity_answers_are_what_the_rms_reads() {
    let accepted = Answer::Accepted {
        reservation: Granted {
            id: "res-7".into(),
            expires_at: 1030.5,
        },
    };
    let json = serde_json::to_string(&accepted).expect("encode");
    let rms: livemig_rms::orchestrator::Answer = serde_json::from_str(&json).expect("decode");
    assert_eq!(
        rms,
        livemig_rms::orchestrator::Answer::Accepted {
            reservation: livemig_rms::Reservation {
                id: "res-7".into(),
                expires_at: 1030.5
            }
        }
    );
    let refused = Answer::Refused {
        reason: "not enough memory".into(),
    };
    let json = serde_json::to_string(&refused).expect("encode");
    let rms: livemig_rms::orchestrator::Answer = serde_json::from_str(&json).expect("decode");
    assert_eq!(
        rms,
        livemig_rms::orchestrator::Answer::Refused {
            reason: "not enough memory".into()
        }
    );
}
