"""
Task module for the web example: a stand-in for sending one mail (the
real one, with smtplib, is mailer_tasks.send_mail).

Run the daemon with it:  twistd -n taskd --tasks mail_tasks
(with this directory on PYTHONPATH).
"""

import time

from taskd import task


@task
def pretend_mail(to: str, subject: str) -> dict[str, str]:
    """
    Pretend to talk to an SMTP server for 50 ms: blocking, as real mail
    code is.  Addresses without an @ are refused.
    """
    time.sleep(0.05)
    if "@" not in to:
        raise ValueError(f"not an address: {to!r}")
    return {"to": to, "subject": subject}
