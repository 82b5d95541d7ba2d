/*
 * IntervalNotifier.pml -- the interval-notifier collision-retry protocol with a mirror.
 *
 * Abstracts (Swift sources of this repository):
 *   Sources/Shootdown/Notifiers/IntervalNotifier.swift
 *       IntervalNotifier.readBegin(), readRetry(_:), checkRetry(_:), setSequence(_:), remove()
 *       IntervalNotifierState.invalidateStart(_:), invalidateEnd(), applyDeferred(),
 *       insert(_:), remove(_:)
 *   Sources/Shootdown/Notifiers/SoftwareMirror.swift
 *       SoftwareMirror.invalidate(_:range:currentSequence:) and apply(...) (the handler),
 *       SoftwareMirror.populate(address:length:write:) (the commit closure, under the mirror's lock)
 *   Sources/Shootdown/AddressSpace/AddressSpace+Mirror.swift
 *       AddressSpace.mirror(address:length:write:notifier:retryLimit:commit:), faultRange(...)
 *   Sources/Shootdown/AddressSpace/AddressSpace.swift
 *       AddressSpace.beginInvalidation(...) / InvalidationScope.end() (start, change, end)
 *
 * What is modelled. One page. The per-space state: its lock, the sequence (starts at 2; odd
 * while an epoch that hit an interval is open), the number of active invalidations, the tree
 * as "which notifiers are in it", and the deferred list as a flag per notifier. Two notifiers
 * cover the page: M, in the tree from the start, whose handler only records the sequence; and
 * N, the mirror's, inserted during the run (possibly into an open epoch, then deferred).
 * Processes:
 *   - two Invalidators, each running INVALS invalidations one after the other:
 *     invalidateStart (lock; active += 1; for the notifiers in the tree: remember the hit; if
 *     any hit, sequence |= 1 and cur = sequence; unlock), the handlers of the hits (the
 *     mirror's: mirror lock, setSequence(cur), drop the translation, unlock; M's: record cur),
 *     then the change of the CPU page table (every invalidation stores a value of its own),
 *     then invalidateEnd (lock; active -= 1; if active == 0 and the sequence is odd:
 *     sequence += 1 and apply the deferred inserts/removals; unlock; wake);
 *   - Registrar: insert(N);
 *   - Remover: remove(M), which waits for the open epoch if M may still be called;
 *   - Reader (the mirror, after insert(N) returned): TRIES rounds of readBegin (under the
 *     state lock: s = N.sequence, and if s equals the state's sequence, wait until the
 *     sequence changes), read the CPU entry, the lock-free checkRetry hint, then mirror lock,
 *     readRetry(s) (a collision: next round) or commit the value read, unlock. A committed
 *     round is followed by another one too (a device faulting the page again), so a later
 *     commit may overwrite an earlier one.
 * The state lock's critical sections are single atomic steps: every variable they touch is
 * accessed only under that lock, except the state's sequence, which each section writes at
 * most once and which the lock-free waiters only read, and N.sequence, which each writes at
 * most once. Waits (WaitQueue.wait) are blocking guards on the sequence, i.e. an ideal wait
 * queue with no lost wake-up. Not modelled: non-blockable ranges (refusal), downgrades to
 * read-only (treated as drops), several pages, the mmap lock (invalidations and the reader's
 * page-table read are allowed to overlap freely, which only adds behaviours).
 *
 * Memory model: spin checks sequential consistency. The Swift code orders everything the
 * argument needs with locks (the state lock around the sequence and the tree; the mirror lock
 * around setSequence/readRetry and the commit) plus the release store of the sequence in
 * invalidateEnd paired with the waiters' acquiring loads, so SC adds nothing here.
 *
 * Properties (assertions):
 *   P1  whenever no invalidation is between its start and its end, a translation held by the
 *       mirror equals the CPU page-table entry (no commit installs a value read before an
 *       invalidation whose handler already ran; checked in every state by a monitor);
 *   P2  M's handler never runs (starts or finishes) after remove(M) returned.
 *
 * Mutants (each must make spin report an error):
 *   MUTANT_NO_SET_SEQ          the mirror's handler does not call setSequence: a reader that
 *                              read the CPU entry before the change commits it afterwards (P1).
 *   MUTANT_CHECK_OUTSIDE_LOCK  readRetry is checked before the mirror lock is taken and the
 *                              commit made after: a handler can run in between (P1).
 *   MUTANT_EARLY_CLOSE         invalidateEnd closes an odd epoch even while another
 *                              invalidation is active: a reader starts inside the still-running
 *                              invalidation's window, after its handler ran, and commits the
 *                              old entry (P1).
 *   MUTANT_REMOVE_NO_WAIT      remove does not wait for the open epoch: M's handler runs after
 *                              remove returned (P2).
 */

#ifndef TRIES
#define TRIES 3                 /* mirror rounds (readBegin ... commit or collision) */
#endif
#ifndef INVALS
#define INVALS 2                /* invalidations per invalidator */
#endif

#define N 0                     /* the mirror's notifier */
#define M 1                     /* another notifier on the same page */

byte seq = 2;                   /* IntervalNotifierState.sequence */
byte nactive;                   /* active (a Promela keyword) */
bool inTree[2];
bool deferred[2];
bool isLive[2];
byte nseq[2];                   /* IntervalNotifier.sequence */

byte cpu;                       /* the CPU page-table entry of the page */
bool mlk;                       /* the mirror's lock */
bool mvalid;                    /* the mirror holds a translation */
byte mval;                      /* ... to this value */

byte changing;                  /* ghost: invalidations between start and end */
bool inserted;                  /* ghost: insert(N) returned */
bool removedM;                  /* ghost: remove(M) returned */

inline applyDeferred() {
    if
    :: deferred[N] -> deferred[N] = 0; inTree[N] = !inTree[N]
    :: else
    fi;
    if
    :: deferred[M] -> deferred[M] = 0; inTree[M] = !inTree[M]
    :: else
    fi
}

proctype Invalidator(byte i)
{
    byte k, cur;
    bool hitN, hitM;

    do
    :: k == INVALS -> break
    :: else ->
        /* invalidateStart */
        atomic {
            nactive++;
            changing++;
            hitN = inTree[N];
            hitM = inTree[M];
            if
            :: hitN || hitM -> seq = seq | 1; cur = seq
            :: else
            fi
        }
        /* the handlers, outside the state lock */
        if
        :: hitN ->
            atomic { mlk == 0 -> mlk = 1 };
#ifndef MUTANT_NO_SET_SEQ
            nseq[N] = cur;                                /* setSequence(currentSequence) */
#endif
            mvalid = 0;                                   /* drop the translation */
            mlk = 0
        :: else
        fi;
        if
        :: hitM ->
            atomic { assert(!removedM); nseq[M] = cur };  /* P2 */
            assert(!removedM)                             /* P2 */
        :: else
        fi;
        /* the page-table change: every invalidation stores a value of its own */
        cpu = 1 + i * INVALS + k;
        /* invalidateEnd */
        atomic {
            nactive--;
            changing--;
#ifdef MUTANT_EARLY_CLOSE
            if
            :: seq & 1 -> seq++; applyDeferred()
            :: else
            fi
#else
            if
            :: nactive == 0 && (seq & 1) -> seq++; applyDeferred()
            :: else
            fi
#endif
            k++; cur = 0; hitN = 0; hitM = 0
        }
    od
}

proctype Registrar()
{
    atomic {                                          /* insert(N) */
        isLive[N] = 1;
        if
        :: nactive > 0 ->
            if
            :: seq & 1 -> deferred[N] = 1             /* epoch open: deferred */
            :: else -> seq = seq | 1; inTree[N] = 1   /* an invalidation that hit nothing */
            fi;
            nseq[N] = seq
        :: else ->
            nseq[N] = seq - 1;
            inTree[N] = 1
        fi;
        inserted = 1
    }
}

proctype Remover()
{
    byte waitFor;

    atomic {                                          /* remove(M) */
        if
        :: isLive[M] ->
            isLive[M] = 0;
            if
            :: seq & 1 ->
                if
                :: deferred[M] && !inTree[M] -> deferred[M] = 0   /* cancel a pending insert */
                :: else -> deferred[M] = 1; waitFor = seq
                fi
            :: else -> inTree[M] = 0
            fi
        :: else
        fi
    }
#ifndef MUTANT_REMOVE_NO_WAIT
    if
    :: waitFor != 0 -> seq != waitFor                 /* waitQueue.wait */
    :: else
    fi;
#endif
    removedM = 1
}

proctype Reader()
{
    byte tries, s, v;
    bool wait;

    inserted;
    do
    :: tries == TRIES -> break
    :: else ->
        atomic { s = nseq[N]; wait = (s == seq) };    /* readBegin, under the state lock */
        if
        :: wait -> seq != s                           /* waitQueue.wait */
        :: else
        fi;
        v = cpu;                                      /* faultRange reads the entry */
        if
        :: nseq[N] != s -> goto next                  /* checkRetry hint */
        :: else
        fi;
#ifdef MUTANT_CHECK_OUTSIDE_LOCK
        if
        :: nseq[N] != s -> goto next                  /* readRetry, without the lock */
        :: else
        fi;
        atomic { mlk == 0 -> mlk = 1 };
        mval = v;
        mvalid = 1;
        mlk = 0;
#else
        atomic { mlk == 0 -> mlk = 1 };
        if
        :: nseq[N] != s -> mlk = 0; goto next         /* readRetry under the mirror lock */
        :: else -> mval = v; mvalid = 1; mlk = 0      /* commit */
        fi;
#endif
next:   skip;
        d_step { tries++; s = 0; v = 0; wait = 0 }
    od
}

/* P1, checked in every state */
active proctype Monitor()
{
end:
    atomic { (changing == 0 && mvalid && mval != cpu) -> assert(false) }
}

init
{
    atomic {
        isLive[M] = 1;                                /* M inserted while idle */
        inTree[M] = 1;
        nseq[M] = seq - 1;
        run Invalidator(0);
        run Invalidator(1);
        run Registrar();
        run Remover();
        run Reader()
    }
}
