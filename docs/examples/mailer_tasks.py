"""
The mailer example's task: send one real message with smtplib.

Run the daemon with it (this directory on PYTHONPATH):

    twistd -n taskd --tasks mailer_tasks
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from taskd import task


@task
def send_mail(to: str, subject: str, body: str, smtpHost: str = "127.0.0.1", smtpPort: int = 25) -> str:
    """
    Connect to the SMTP server and send one message to C{to}.  A refused
    recipient raises L{smtplib.SMTPRecipientsRefused}.
    """
    message = EmailMessage()
    message["From"] = "taskd-example@example.com"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP(smtpHost, smtpPort, timeout=30) as smtp:
        smtp.send_message(message)
    return to
