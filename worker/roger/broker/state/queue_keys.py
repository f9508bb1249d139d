"""Queue keys seen from a worker: freeing a job's key when the job leaves the partition.

A queue key makes ``enqueue`` refuse a second job while one with the same key is queued or
running (the client takes the key: see ``roger.broker.state_client.take_queue_key``). The
worker frees it when the job leaves (succeeded, buried, cancelled, parked for good), but
only if the key's token still names that job: a redelivered job that already left must not
free the key of a newer one.
"""

from __future__ import annotations

from roger.broker.channels import Confirm, Got
from roger.broker.flow import Flow, Refused, run
from roger.broker.state.session import Session, noop
from roger.core import naming


class QueueKeys:
    def __init__(self, session: Session) -> None:
        self.s = session

    def release(self, key: str, job_id: str, done: Confirm = noop) -> None:
        """Free ``key`` if its token belongs to ``job_id``, then delete the empty key
        queue; ``done(True)`` if the key is not ``job_id``'s any more."""
        run(self._release(key, job_id), done)

    def _release(self, key: str, job_id: str) -> Flow[bool]:
        name = naming.queue_key_queue_name(self.s.partition, key)
        try:
            ch = yield self.s.one_shots.opened()
            try:
                got: Got | None = yield ch.get(name)
                if got is None:
                    return True
                if got.props.message_id != job_id:
                    # not ours: put the token back, and answer once the broker has it
                    ch.nack(got.tag, requeue=True)
                    yield ch.closed()
                    return False
                ch.ack(got.tag)
                yield ch.delete(name, if_empty=True)
                return True
            finally:
                ch.finish()
        except Refused as refused:
            # 404: no key queue (nothing held); 406: a new token arrived between our ack
            # and the delete (the key is someone else's now); both are fine
            return refused.code in (404, 406)
