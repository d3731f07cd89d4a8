from __future__ import annotations

from actors.sim._agent import AgentReport, GetAgentReport, SimulatedAgent
from actors.sim._client import (
    ClientReport,
    ClientSocket,
    FinishClient,
    GetClientReport,
    SimulatedClient,
    ThreadReceipts,
)
from actors.sim._faults import (
    FAULT_CATALOG,
    FAULT_PHASE,
    RUN_SCENARIOS,
    SCENARIO_KINDS,
    FaultClass,
    FaultSpec,
    FaultSpecError,
    occurrence_times,
    parse_duration,
    parse_fault,
)
from actors.sim._plan import (
    ClientPlan,
    Outage,
    RuntimeFault,
    SimulationPlan,
    SimulationSpec,
    SlowWindow,
    plan_simulation,
)
from actors.sim._report import REPORT_VERSION, SimulationReport, render_summary, report_without_wall
from actors.sim._scoring import Detection, Explanation, KindScore, Scoring, score
from actors.sim._scripts import AgentProfile, GroundTruth, ScriptStep, ThreadScript, TruthMark, truth_of

__all__ = [
    "FAULT_CATALOG",
    "FAULT_PHASE",
    "REPORT_VERSION",
    "RUN_SCENARIOS",
    "SCENARIO_KINDS",
    "AgentProfile",
    "AgentReport",
    "ClientPlan",
    "ClientReport",
    "ClientSocket",
    "Detection",
    "Explanation",
    "FaultClass",
    "FaultSpec",
    "FaultSpecError",
    "FinishClient",
    "GetAgentReport",
    "GetClientReport",
    "GroundTruth",
    "KindScore",
    "Outage",
    "RuntimeFault",
    "Scoring",
    "ScriptStep",
    "SimulatedAgent",
    "SimulatedClient",
    "SimulationPlan",
    "SimulationReport",
    "SimulationSpec",
    "SlowWindow",
    "ThreadReceipts",
    "ThreadScript",
    "TruthMark",
    "occurrence_times",
    "parse_duration",
    "parse_fault",
    "plan_simulation",
    "render_summary",
    "report_without_wall",
    "score",
    "truth_of",
]
