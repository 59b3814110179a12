"""Control routes: recall what has not gone out, and reload the rules without a restart."""

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sendguard.access import Admin, Operator, RuntimeDep
from sendguard.errors import ConfigError

router = APIRouter()


class RecallIn(BaseModel):
    """Which messages to call back: all given fields must match."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = None
    campaign: str | None = None
    segment: str | None = None
    inbox: str | None = Field(default=None, description="the From address")
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _some_filter(self) -> "RecallIn":
        if not self.filters:
            raise ValueError("give at least one of agent, campaign, segment, inbox")
        return self

    @property
    def filters(self) -> dict[str, str]:
        fields = {"agent": self.agent, "campaign": self.campaign, "segment": self.segment}
        fields["from_addr"] = self.inbox.strip().lower() if self.inbox else None
        return {name: value for name, value in fields.items() if value}


class RecallOut(BaseModel):
    cancelled: int
    by_state: dict[str, int] = Field(description="how many were held, queued or deferred")


class RulesOut(BaseModel):
    version: str
    previous_version: str
    path: str


@router.post("/v1/recall", response_model=RecallOut)
async def recall(body: RecallIn, runtime: RuntimeDep, who: Operator) -> RecallOut:
    """Cancel every matching message not yet sent; those already sending cannot be called back."""
    counts = await runtime.store.recall(body.filters, f"recalled by {who}: {body.reason}")
    return RecallOut(cancelled=sum(counts.values()), by_state=counts)


@router.post("/v1/rules/reload", response_model=RulesOut)
async def reload_rules(runtime: RuntimeDep, who: Admin) -> RulesOut:
    """Read the rules file again; a file that does not validate is refused and the old rules stay."""
    try:
        previous = runtime.reload_rules()
    except ConfigError as exc:
        raise HTTPException(422, str(exc)) from exc
    return RulesOut(
        version=runtime.rules.version, previous_version=previous.version, path=str(runtime.rules.path)
    )
