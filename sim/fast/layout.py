"""The packed layouts of the compiled engine: every array the loop reads, field by field.

numba compiles plain arrays and tuples of arrays best, so the engine's state is a few packed
arrays indexed by the names below (module constants: numba folds them into the compiled code).
Times are in simulated seconds; "id" is a client id (a row of the per-client arrays).

Client states (`st`, int8 per client), as in `sim.des`, plus one for arrivals still to come:

    =========  ====  ===============================================
    name       code  meaning
    =========  ====  ===============================================
    OFFLINE    0     not wanting the service
    CONNECTING 1     in an episode: attempting, or on a retry timer
    ONLINE     2     logged in, in a session
    GAVE_UP    3     gave up; waits to relaunch
    NOT_YET    4     a `login_rate` arrival that has not come yet
    =========  ====  ===============================================

Float parameters `P` (float64; set at the start, the marked ones by events):

    ==================  =========================================================  ========
    field               meaning                                                    unit
    ==================  =========================================================  ========
    P_WIDTH             width of a time-series bin                                 s
    P_STEADY0, 1        the steady window: start, end                              s
    P_TAIL0             the tail window's start                                    s
    P_RTT               client round trip (a refusal's reply arrives after it)      s
    P_GIVE_UP           give_up_after, from the episode's first attempt            s
    P_RETRY_AFTER       a busy tier's fixed Retry-After (without Q_QUEUE_RA)       s
    P_QLIMIT            queue_limit                                                requests
    P_BASE, CAP         the policy's kernel arguments (`Policy.kernel_args`)       s
    P_MULT, TOP         the same: multiplier, top                                  -
    P_KNEE              overload: the queue + serving count where slowdown starts  requests
    P_PER_REQ           overload: service time factor per request above the knee   1/request
    P_RL_RATE, BURST    rate limit: token rate, bucket size                        1/s, tokens
    P_RL_RA             rate limit: Retry-After of its refusals                    s
    P_W_START           the ShareWatch's start (`RunRecords.watch.start`)          s
    P_THR0, 1           the ShareWatch's two thresholds                            share
    P_REJECT_COST       worker time a refusal costs (0: refusals are free)         s
    P_ADMIT             admit: share of keys let in (inf: no admit event yet)      share
    P_ADMIT_RA          admit: Retry-After of its refusals                         s
    P_RATIO             p2p: supernode_ratio (event-set by p2p-rules)              share
    P_PROMO_DELAY       p2p: online this long before a promotion (p2p-rules)       s
    P_PROMO_RATE        p2p: share of the shortfall promoted per tick (p2p-rules)  share
    P_SHUTDOWN_AT       p2p: waiting requests per slot that shut supernodes down   requests
    P_SHUTDOWN_RATE     p2p: share of supernodes shut down per tick (p2p-rules)    share
    P_PER_WORKER        p2p: homes per dedicated worker (children / slots)         clients
    P_FAULT             fault_rate: share of the requests past the checks that    share
                        fail whatever the load (0: no fault injection, no draws)
    P_RESUME_WINDOW     client.resume_window: a token younger than this makes an   s
                        attempt a resumption (0: never; Q_RESUME is then 0)
    P_RA_MAX            retry_after_max: the top of a Retry-After computed from    s
                        the queue (Q_QUEUE_RA)
    P_MEAN_SERVICE      the mean of server.service_time (the queue's Retry-After)  s
    P_FAR_INV           1 / FAR_WIDTH: an entry's bucket is int(time x this)        1/s
    ==================  =========================================================  ========

Int parameters `Q` (int64; the marked ones change during the run):

    ==============  ============================================================
    field           meaning
    ==============  ============================================================
    Q_WORKERS       workers now: dedicated + supernode slots (changes)
    Q_POLICY        the retry policy's code (`POLICY_CODES`)
    Q_RANDOM        1: the policy draws a uniform per delay
    Q_MAX_ATT       attempts per episode before giving up (0: unlimited)
    Q_LIFO          1: the queue is served last in, first out
    Q_DROP          1: expired requests are dropped at the queue's head
    Q_CANCEL        1: cancel_on_timeout, service is cut at the client's deadline
    Q_HONOR         1: the client honours Retry-After
    Q_NBINS         time-series bins
    Q_OVERLOAD      1: the overload slowdown is on
    Q_RL            1: the token-bucket rate limit is on
    Q_ABASE         the first arrival's id (clients before it exist at t = 0)
    Q_DEDICATED     dedicated workers now (changes: capacity, failover)
    Q_EXTRA         workers from supernode slots now (changes)
    Q_P2P           1: supernodes are modelled
    Q_CHILDREN      p2p: children per supernode
    Q_SLOTS         p2p: worker slots per supernode
    Q_MARGIN        heap rows kept free before each event (16 + a supernode's orphans)
    Q_LIMITER       the client limiter's kind code (`sim.limiters`; 0: none, and the
                    loop touches nothing of `lm`)
    Q_L_DRAWS       1: the limiter draws a uniform per call (adaptive)
    Q_L_STOPS       1: the limiter denies retries (quota, throttle, budget: `on_retry`)
    Q_L_DEVICE      1: one row of limiter state per client (scope "device")
    Q_L_GROUPS      rows of shared limiter state (a client uses row id % groups)
    Q_FAULT_FAST    1: an injected fault answers an error at once (fault_when "fast"),
                    0: after its service ("after-service")
    Q_CLIMIT        1: the adaptive concurrency limit is on (`[server.concurrency]`:
                    PR_LPRM, PR_LROW; 0: the loop touches neither)
    Q_CODEL         1: CoDel queue timeouts are on (`[server.codel]`: PR_CPRM, PR_CROW)
    Q_ALIFO         1: CoDel's adaptive LIFO (newest first while CoDel is overloaded)
    Q_QUEUE_RA      1: a busy tier's 503 carries a Retry-After computed from the queue
                    (retry_after_from "queue"), 0: P_RETRY_AFTER
    Q_RESUME        1: clients hold tokens (resume_window > 0: PR_TOK is per client)
    Q_RESUME_SVC    1: a resumption's service time is drawn from `[server.resume]`
                    (stream D_RESUME), 0: from service_time (D_SERVICE)
    ==============  ============================================================

Int state `S` (int64; counts, ring heads, list lengths):

    ===================  ==========================================================
    field                meaning
    ===================  ==========================================================
    S_HN                 heap entries
    S_SEQ                the next heap entry's seq (ties break by it, as SimPy's)
    S_QH, S_QN           the queue ring: head, length
    S_FREE               free request slots (the top of the `free` stack)
    S_BUSY               busy workers: serving plus doing reject work
    S_SERVING            requests in service
    S_HIT                the next fraction-event hit to act (index into `hits`)
    S_ARR                the next arrival to come (index into `arrivals`)
    S_EVENTS             events processed (the run's event count)
    S_N0 + state         clients in each state (S_N0 .. S_N3: OFFLINE .. GAVE_UP)
    S_EPISODES           episodes begun (tally)
    S_GAVE_UP            give-ups (tally)
    S_WAITS_STARTED      services started in the steady window
    S_WAITS_POS          ... of which after a positive wait in the queue
    S_LOGINS             logins recorded (used length of `logins`)
    S_OUTAGE             the outage mode now (OUT_NONE, OUT_REFUSE, OUT_BLACKHOLE)
    S_RJH, S_RJN         the reject-work ring: head, length
    S_REDISPATCH         1: a dispatch cut short resumes at G_REDISPATCH_AT
    S_RAMP               id of the latest capacity event (older ramp steps are void)
    S_NPART              active partitions (rows of PT)
    S_NSN                supernodes (used length of `active`)
    S_NROOM              supernodes with room (used length of `room`)
    S_NONS               ONLINE ordinary clients (used length of `ons`)
    S_SFREE              free supernode slots (the top of the `sfree` stack)
    S_FCUR               the event queue's current bucket (`sim.fast.heap`)
    S_FN                 entries in the ring's buckets
    S_FFREE, S_FFREEN    the ring's free chunks: the first (a list through HQ_NEXT;
                         -1: none), how many
    S_ON                 entries in the overflow heap
    S_POS + k            read position in draw stream k (D_TIMEOUT .. D_RESUME)
    S_PF_DONE            profile: cycles attributed to a part so far
    S_PF + part          profile: a part's own cycles (PF_CHECKS .. PF_RECORDS)
    S_PFN + part         profile: how many times the part ran
    S_PF_HEAP            profile: heap entries, summed over the pops
    ===================  ==========================================================

Float state `G` (float64):

    ====================  ===========================================================  ======
    field                 meaning                                                      unit
    ====================  ===========================================================  ======
    G_BUSY_TIME           worker time spent (tally)                                    s
    G_WASTED_TIME         worker time on requests whose client no longer waited        s
    G_WAITS_SUM           queue waits of the services started in the steady window    s
    G_TOKENS, _AT         the rate limit's bucket: tokens, when last refilled          -, s
    G_SHARE, G_SINCE      ShareWatch: online share now, since when                     -, s
    G_TAIL_MAX            ShareWatch: highest share in the tail window                 share
    G_LOWEST, _AT         ShareWatch: lowest share, when                               -, s
    G_BELOW0, 1           ShareWatch: 1.0 while below threshold 0, 1                   flag
    G_EVER0, 1            ShareWatch: 1.0 once below threshold 0, 1 after the start    flag
    G_LAST_UP0, 1         ShareWatch: when the share last rose above threshold 0, 1    s
    G_REDISPATCH_AT       when the pending dispatch (S_REDISPATCH) acts                s
    ====================  ===========================================================  ======

The event queue `hp` (`sim.fast.heap`): HQ_NEAR (the near heap: rows, a 4-ary min-heap by time,
then seq; S_HN of them), HQ_ROWS (the ring's rows, same columns, in chunks of FAR_CHUNK rows:
chunk c is rows c x FAR_CHUNK ...), HQ_NEXT (int64 per chunk: the next chunk of its bucket or of
the free list, -1: the end), HQ_HEAD, HQ_COUNT, HQ_TAIL (int64 per bucket, FAR_BUCKETS: its first
chunk or -1, its rows, its last chunk; rows fill a bucket's chunks in order), HQ_OVER (the
overflow heap: entries beyond the ring's reach; S_ON of them). A row (float64 x 4 = 32 bytes):

    ====  ======  ==============================================================
    col   name    meaning
    ====  ======  ==============================================================
    0     time    when the entry acts (s)
    1     seq     push order: entries at the same time act in it (SimPy's order)
    2     code    a x 16 + kind: kind is K_*, a is the client id (client entries),
                  the request slot (K_DONE, K_REJECT_DONE), the worker count
                  (K_WORKERS) or 0 (K_TICK)
    3     g       the client's generation when pushed (a client entry is void when
                  it no longer matches), the ramp id (K_WORKERS), else 0
    ====  ======  ==============================================================

The per-client row (`Engine.rows`, float64 x 8 = one 64-byte cache line; the columns are the
arrays of `cl` below): gen (bumped when whatever a client waits for no longer concerns it),
natt (attempts in the episode), first (its first attempt's time), sent (this attempt's send
time), prev (the previous delay; nan: none yet), cra (the Retry-After of the refusal on its way),
learned (when it knows the failover's standby), orbiting (1.0: on a retry timer).

Tuples of arrays the kernels take, by index:

    ==========  ==========================================================================
    tuple       fields (index constants)
    ==========  ==========================================================================
    cl          per client: CL_STATE (st, int8), CL_GEN, CL_REBOOTING (uint8), CL_ORBITING,
                CL_BEGUN (the episode's start), CL_FIRST, CL_SENT, CL_PREV, CL_NATT, CL_CRA,
                CL_KEYS (the fixed uniform key of admit and partitions), CL_LEARNED
    pool        per request slot: PL_CLIENT, PL_GEN (the client's generation at send),
                PL_SENT, PL_DEADLINE, PL_START (service start), PL_FREE (stack of free
                slots), PL_QUEUE (ring of queued slots), PL_STATE (R_*), PL_HANG (bits:
                HANG_PARTITION 1: a partition may hang it, HANG_FAULT 2: an injected
                fault, answered with an error after its service; K_DONE answers an
                error when either is left; HANG_RESUME 4: a session resumption, served
                from D_RESUME with Q_RESUME_SVC), PL_REJECTS (ring of reject work waiting)
    rec         `sim.record` as arrays: REC_LV (per level: value, since, integral),
                REC_LB (level bins), REC_LS (level window snapshots; nan: not taken),
                REC_WS (the windows' starts: steady, tail), REC_CT (counter totals),
                REC_CB (counter bins), REC_CS (counter window snapshots; -1: not taken),
                REC_SCB, REC_SCT, REC_SCS (start counters SC_*: bins, totals, steady
                sum), REC_LOGINS (login times), REC_S (the int state `S`: the profile's
                counters, `sim.fast.profile`)
    pp          supernodes (docs/model.md section 3.2), per client: PP_SIDX (its supernode slot or -1),
                PP_SINCE (online since), PP_HOME (home slot or -1), PP_NEXT, PP_PREV (its
                home's child list, doubly linked), PP_ONPOS (place in PP_ONS or -1),
                PP_ONS (the ONLINE ordinary clients: promotion candidates);
                per supernode slot: PP_SCID (its client), PP_HEAD (first child),
                PP_NKIDS (children), PP_RPOS (place in PP_ROOM or -1), PP_ROOM (slots with
                room), PP_APOS (place in PP_ACTIVE), PP_ACTIVE (slots in use), PP_SFREE
                (stack of free slots), PP_BUF (scratch: a shutdown's supernodes,
                the ripe clients of a promotion; as long as the clients)
    hits        the sorted stream of fraction-event hits: HT_TIME, HT_CLIENT, HT_KIND
                (H_*), HT_DOWNTIME (a reboot's)
    lm          the client limiter (docs/model.md section 4.7, `sim.limiters`): LM_PRM (its
                `prm`, float64 x 8), LM_STATE (float64, rows x `width`: one row per client
                or per group, Q_L_DEVICE / Q_L_GROUPS), LM_INITIAL (a fresh row: a reboot
                resets a per-device row to it), LM_HELD (per client: the quota cost the
                episode's last retry took, 0 at the episode's start); size-1 dummies
                when Q_LIMITER is 0, so the loop has one compiled signature
    pr          the server's adaptive protections and the clients' tokens (docs/model.md
                sections 3.3, 3.4, `sim.protections`), all float64: PR_LPRM (the
                concurrency limit's `prm`, x 10), PR_LROW (its state row, x 4), PR_CPRM
                (CoDel's `prm`, x 2), PR_CROW (its state row, x 4), PR_TOK (per client:
                when it last logged in, -inf: no token); size-1 dummies for what is off
                (Q_CLIMIT, Q_CODEL, Q_RESUME 0), so the loop has one compiled signature
    ==========  ==========================================================================

`PT` (float64, MAX_PARTITIONS x 5): per active partition: PT_OFFSET (its key offset), PT_FRACTION,
PT_FAILURE (probability a request hangs / fails fast), PT_HANG (how long a hang lasts),
PT_ISOLATE_AT (from then on: fail fast). `draws` (float64, N_STREAMS x BLOCK): blocks of each
stream's own samples, read at S_POS + k (D_RESUME only with Q_RESUME_SVC: zeros otherwise, and
never refilled, so the other streams draw exactly what they drew before it existed).
"""

from __future__ import annotations

import math

from sim.record import COUNTS, LEVELS

INF = math.inf

# client states (as in sim.des), plus a slot for a login_rate client that has not arrived yet
OFFLINE, CONNECTING, ONLINE, GAVE_UP, NOT_YET = 0, 1, 2, 3, 4
# rows of the levels and counters (sim.record's LEVELS and COUNTS)
L_QUEUE, L_SERVING, L_REJECTING, L_WORKERS, L_SUPERNODES, L_ORBIT = (
    LEVELS.index(n) for n in ("queue", "serving", "rejecting", "workers", "supernodes", "orbit"))
(C_ATTEMPTS, C_SUCCESSES, C_REJECTED, C_TIMEOUTS, C_ERRORS, C_WASTED, C_SUPPRESSED, C_SHORT, C_RESUMPTIONS,
 C_RESUMED) = (
    COUNTS.index(n) for n in ("attempts", "successes", "rejected", "timeouts", "errors", "wasted", "suppressed",
                              "short_circuited", "resumptions", "resumed"))
SC_REFUSALS, SC_TIMEOUTS = 0, 1  # start counters: steady_refusals, steady_timeouts

# heap entry kinds: a client's timer or reply (valid while its generation matches; a refusal's
# Retry-After waits in `cra`; K_FAULT: an injected fault's error answered at once), a service or
# reject-work end (by pool slot), a ramp step (by ramp id)
(K_SESSION_END, K_WANT, K_REBOOT_END, K_ATTEMPT, K_RETRY, K_REFUSED, K_TIMEOUT, K_DONE, K_REJECT_DONE,
 K_WORKERS, K_TICK, K_FAULT) = range(12)
P2P_TICK = 60.0  # docs/model.md section 3.2: the supernode rules act every minute
# pool slot states: what a request slot holds
R_FREE, R_QUEUED, R_SERVING, R_REJECT, R_DEAD = range(5)
# hit kinds (the sorted stream of fraction-event hits)
H_REBOOT, H_DISCONNECT, H_LOGIN = 0, 1, 2
# what a client does next inside one event
(A_NONE, A_EPISODE, A_ATTEMPT, A_FAIL, A_TIMEOUT, A_SUCCESS, A_ONLINE, A_OFFLINE, A_REBOOT, A_GIVE_UP,
 A_ERROR, A_REFUSAL) = range(12)
# control codes: server actions Python asks for between two stretches
CT_WORKERS, CT_LOSE, CT_DISPATCH = range(3)
# outage modes (S_OUTAGE)
OUT_NONE, OUT_REFUSE, OUT_BLACKHOLE = range(3)
MAX_PARTITIONS = 64

# draw streams: blocks of each distribution's own samples (D_UNIFORM: the policy's, zeros when it
# draws none; D_U01: partitions' hang / fail-fast, fault injection, the adaptive limiter: at most
# 4 in one attempt, within SPARE; D_RESUME: `[server.resume]`'s service time, last so that the
# others are filled as before it existed, zeros and never read without it)
D_TIMEOUT, D_CONNECT, D_RELAUNCH, D_SESSION, D_OFFLINE, D_SERVICE, D_UNIFORM, D_U01, D_RESUME = range(9)
N_STREAMS, BLOCK, SPARE = 9, 1 << 15, 8

# float parameters
(P_WIDTH, P_STEADY0, P_STEADY1, P_TAIL0, P_RTT, P_GIVE_UP, P_RETRY_AFTER, P_QLIMIT, P_BASE, P_CAP, P_MULT,
 P_TOP, P_KNEE, P_PER_REQ, P_RL_RATE, P_RL_BURST, P_RL_RA, P_W_START, P_THR0, P_THR1, P_REJECT_COST,
 P_ADMIT, P_ADMIT_RA, P_RATIO, P_PROMO_DELAY, P_PROMO_RATE, P_SHUTDOWN_AT, P_SHUTDOWN_RATE, P_PER_WORKER,
 P_FAULT, P_RESUME_WINDOW, P_RA_MAX, P_MEAN_SERVICE, P_FAR_INV) = range(34)
N_P = P_FAR_INV + 1
# int parameters
(Q_WORKERS, Q_POLICY, Q_RANDOM, Q_MAX_ATT, Q_LIFO, Q_DROP, Q_CANCEL, Q_HONOR, Q_NBINS, Q_OVERLOAD, Q_RL, Q_ABASE,
 Q_DEDICATED, Q_EXTRA, Q_P2P, Q_CHILDREN, Q_SLOTS, Q_MARGIN, Q_LIMITER, Q_L_DRAWS, Q_L_STOPS, Q_L_DEVICE,
 Q_L_GROUPS, Q_FAULT_FAST, Q_CLIMIT, Q_CODEL, Q_ALIFO, Q_QUEUE_RA, Q_RESUME, Q_RESUME_SVC) = range(30)
N_Q = Q_RESUME_SVC + 1
# int state
(S_HN, S_SEQ, S_QH, S_QN, S_FREE, S_BUSY, S_SERVING, S_HIT, S_ARR, S_EVENTS, S_N0, S_N1, S_N2, S_N3, S_EPISODES,
 S_GAVE_UP, S_WAITS_STARTED, S_WAITS_POS, S_LOGINS, S_OUTAGE, S_RJH, S_RJN, S_REDISPATCH, S_RAMP, S_NPART,
 S_NSN, S_NROOM, S_NONS, S_SFREE, S_FCUR, S_FN, S_FFREE, S_FFREEN, S_ON, S_POS) = range(35)
# the profile's parts (`sim.fast.profile`, with LOGINSTORM_FAST_PROFILE=1): the loop's checks before
# an event, heap pops and pushes, an event's own work (choosing its source, a hit, a service's
# end), stale heap entries skipped, a client's steps, the server, the supernodes, the records
(PF_CHECKS, PF_POP, PF_PUSH, PF_EVENT, PF_STALE, PF_STEPS, PF_SERVER, PF_P2P, PF_RECORDS) = range(9)
N_PF = PF_RECORDS + 1
S_PF_DONE = S_POS + N_STREAMS  # cycles attributed to a part so far
S_PF = S_PF_DONE + 1           # S_PF + part: a part's own cycles
S_PFN = S_PF + N_PF            # S_PFN + part: how many times it ran
S_PF_HEAP = S_PFN + N_PF       # the heap's size summed over the pops
N_S = S_PF_HEAP + 1
# float state
(G_BUSY_TIME, G_WASTED_TIME, G_WAITS_SUM, G_TOKENS, G_TOKENS_AT, G_SHARE, G_SINCE, G_TAIL_MAX, G_LOWEST,
 G_LOWEST_AT, G_BELOW0, G_BELOW1, G_EVER0, G_EVER1, G_LAST_UP0, G_LAST_UP1, G_REDISPATCH_AT) = range(17)
N_G = G_REDISPATCH_AT + 1

# heap row columns
HP_TIME, HP_SEQ, HP_CODE, HP_GEN = range(4)
# the event queue `hp` (`sim.fast.heap`): the near heap, the ring's rows (in chunks), the chunks'
# links, each bucket's first chunk, row count and last chunk, the overflow heap
HQ_NEAR, HQ_ROWS, HQ_NEXT, HQ_HEAD, HQ_COUNT, HQ_TAIL, HQ_OVER = range(7)
FAR_CHUNK = 8                 # rows in a chunk of the ring (a power of 2): 256 bytes
FAR_WIDTH = 1 / 64            # s: a bucket of the ring
FAR_BUCKETS = 1 << 18         # buckets in the ring (a power of 2): 4,096 s ahead
NEAR_MIN = 4096               # below this many entries in the queue, every push goes to the near heap
# the tuples of arrays
(CL_STATE, CL_GEN, CL_REBOOTING, CL_ORBITING, CL_BEGUN, CL_FIRST, CL_SENT, CL_PREV, CL_NATT, CL_CRA, CL_KEYS,
 CL_LEARNED) = range(12)
PL_CLIENT, PL_GEN, PL_SENT, PL_DEADLINE, PL_START, PL_FREE, PL_QUEUE, PL_STATE, PL_HANG, PL_REJECTS = range(10)
LM_PRM, LM_STATE, LM_INITIAL, LM_HELD = range(4)
PR_LPRM, PR_LROW, PR_CPRM, PR_CROW, PR_TOK = range(5)
# PL_HANG bits: a partition may hang the request (decided at service start); an injected fault
# (fault_when = "after-service": served, then answered with an error); a session resumption
# (docs/model.md section 3.4: not an error, its service time may differ)
HANG_PARTITION, HANG_FAULT, HANG_RESUME = 1, 2, 4
(REC_LV, REC_LB, REC_LS, REC_WS, REC_CT, REC_CB, REC_CS, REC_SCB, REC_SCT, REC_SCS, REC_LOGINS, REC_S) = range(12)
(PP_SIDX, PP_SINCE, PP_HOME, PP_NEXT, PP_PREV, PP_ONPOS, PP_ONS, PP_SCID, PP_HEAD, PP_NKIDS, PP_RPOS, PP_ROOM,
 PP_APOS, PP_ACTIVE, PP_SFREE, PP_BUF) = range(16)
HT_TIME, HT_CLIENT, HT_KIND, HT_DOWNTIME = range(4)
PT_OFFSET, PT_FRACTION, PT_FAILURE, PT_HANG, PT_ISOLATE_AT = range(5)

# loop exit codes: done, or Python must grow / refill something and call again
DONE, GROW_HEAP, REFILL, GROW_POOL, GROW_LOGINS = range(5)
