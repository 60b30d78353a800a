"""Charging sessions with the energy booked inside them: the API's and the exports' read."""

from __future__ import annotations

#: A session with the energy booked from the connector's register history inside it
#: (after its start, up to its stop: the start's own reading books what came before). The
#: LATERAL aggregate is grouped (no row without readings): Citus cannot push down one
#: without GROUP BY (docs/scale.md); it still reads each session's rows by the key.
SESSION_SELECT = """
SELECT s.*, coalesce(e.kwh, 0) AS kwh, coalesce(e.readings, 0) AS readings,
       coalesce(e.pending, 0) AS pending
  FROM charging_sessions s
  LEFT JOIN LATERAL (
      SELECT sum(r.kwh_consumed_ac) AS kwh,
             count(*) FILTER (WHERE r.kwh_register_ac IS NOT NULL) AS readings,
             count(*) FILTER (WHERE r.register_quality LIKE 'pending%') AS pending
        FROM meter_readings r
       WHERE r.meter_id = s.meter_id AND r.ts > s.started_at
         AND r.ts <= coalesce(s.stopped_at, now())
       GROUP BY r.meter_id
  ) e ON true
"""

#: The signed meter values stored with a session's readings, as a JSON array.
SESSION_SIGNED = """
SELECT coalesce(jsonb_agg(jsonb_build_object(
           'ts', v.ts, 'measurand', v.measurand, 'signedData', v.signed_data,
           'signingMethod', v.signing_method, 'encoding', v.encoding,
           'publicKey', v.public_key) ORDER BY v.ts, v.measurand), '[]')::text
  FROM charger_signed_values v
 WHERE v.meter_id = s.meter_id AND v.ts >= s.started_at
   AND v.ts <= coalesce(s.stopped_at, now())
"""
