#!/bin/sh
# main.cf changes for bouncetrack, as postconf -e commands: what `bouncetrack install`
# applies (it does this for you, idempotently, with a backup; `bouncetrack install
# --dry-run` shows the exact diff for your main.cf). Review, then run as root.
# Replace bounce.example.com by your bounce domain and C by your config dir (/etc/postfix).
set -e
C=/etc/postfix
# The milter socket /var/spool/postfix/bouncetrack/milter.sock, named relative to the queue
# directory: a chrooted smtpd/cleanup (Debian's master.cf) finds it too (README.md here).
SOCK=bouncetrack/milter.sock
# Per-milter settings (Postfix >= 3.0): OUR milter tempfails when down (451 4.7.1, the
# client retries, no mail lost) and speaks protocol 6, without changing the global
# milter_default_action/milter_protocol your other milters rely on.
OURS="{ unix:$SOCK, default_action=tempfail, protocol=6 }"
# APPEND to your existing milters (never replace them; an empty element is ignored). smtpd: mail over SMTP;
# non_smtpd: sendmail(1)/pickup mail.
postconf -c $C -e "smtpd_milters = $(postconf -c $C -h smtpd_milters), $OURS"
postconf -c $C -e "non_smtpd_milters = $(postconf -c $C -h non_smtpd_milters), $OURS"
# Postfix drops Return-Path headers before milters see them by default; the milter needs
# to see it (a Return-Path header names the bounce address) and removes it itself.
# (Your effective list without return-path; the default is shown.)
postconf -c $C -e 'message_drop_headers = bcc, content-length, resent-bcc'
# Mail for the bounce domain goes to the bounce pipe: our own map, FIRST in the list so
# no wildcard of yours shadows it (see ./transport).
postconf -c $C -e "transport_maps = texthash:$C/bouncetrack_transport, $(postconf -c $C -h transport_maps)"
# Accept mail for the bounce domain, added to your relay_domains. Unset, its default is
# $mydestination below compatibility_level 2, else empty: write that, not the expression
# `postconf -h` prints for the default.
R=$(postconf -c $C -nh relay_domains)
[ -n "$R" ] || [ -z "$(postconf -c $C -xh relay_domains)" ] || R='$mydestination'
postconf -c $C -e "relay_domains = ${R:+$R, }bounce.example.com"
# One recipient per pipe run, so ${recipient} is one address.
postconf -c $C -e 'bouncepipe_destination_recipient_limit = 1'
# The master.cf entry (see ./master.cf):
postconf -c $C -M -e 'bouncepipe/unix=bouncepipe unix - n n - 10 pipe flags=Rq user=bouncetrack size=10240000 argv=/opt/bouncetrack/venv/bin/python -S /opt/bouncetrack/src/bouncetrack/bounce_pipe/client.py --socket /run/bouncetrack-pipe/pipe.sock --config /etc/bouncetrack/config.yaml --client-address=${client_address} ${recipient} ${sender}'
# Only valid VERP addresses are accepted for the bounce domain at SMTP time: the milter
# refuses the others at RCPT (550 5.1.1), so no main.cf restriction is needed for that.
postfix -c $C check
