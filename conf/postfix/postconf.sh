#!/bin/sh
# main.cf changes for bouncetrack, as postconf -e commands. Review, then run as root.
# If you already use milters, append ours to your list instead of replacing it.
set -e
postconf -e 'smtpd_milters = unix:/run/bouncetrack/milter.sock'
postconf -e 'non_smtpd_milters = unix:/run/bouncetrack/milter.sock'   # sendmail(1)/pickup mail too
postconf -e 'milter_protocol = 6'
# Never lose mail: milter down => 451 4.7.1 to the client, which retries.
postconf -e 'milter_default_action = tempfail'
# Postfix drops Return-Path headers before milters see them by default; the milter needs
# to see it (spec: a Return-Path header names the bounce address) and removes it itself.
postconf -e 'message_drop_headers = bcc, content-length, resent-bcc'
# Mail for the bounce domain goes to the bounce pipe, one recipient per run.
postconf -e 'transport_maps = hash:/etc/postfix/transport'
postconf -e 'relay_domains = $relay_domains, bounce.example.com'
postconf -e 'bouncepipe_destination_recipient_limit = 1'
