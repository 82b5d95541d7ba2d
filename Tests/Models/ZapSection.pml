/*
 * ZapSection.pml -- the per-VMA shared zap section against writers that take a VMA exclusively
 * under the mmap read lock, over two mappings of one object.
 *
 * Abstracts (Swift sources of this repository):
 *   Sources/Shootdown/VMA/VMA.swift
 *       VMA.enterZapSection(), leaveZapSection(), lockExclusively(),
 *       waitHoldingWriterLock(while:), unlockExclusively(), tryLockExclusively()
 *   Sources/Shootdown/AddressSpace/AddressSpace+VMAEdit.swift
 *       VMAEdit.touch(_:) (zap sections in increasing address order), touchExclusively(_:),
 *       finish() (leaves every touched VMA, in touch order)
 *   Sources/Shootdown/AddressSpace/AddressSpace+Advise.swift
 *       advise .remove (one edit: holePunchVMAs touches every VMA the punch may zap, the
 *       object's other mappings included, in address order, before anything is zapped; all held
 *       until finish), .dontNeed (one edit, one VMA here), .guardInstall (one edit per VMA:
 *       touchExclusively, change, finish, next VMA)
 *   Sources/Shootdown/AddressSpace/AddressSpace+Reap.swift (optional REAP: tryLockExclusively)
 *
 * What is modelled. Two VMAs, A below B, mapping the same object pages. Per VMA: writerLock (a
 * lock with no owner check), zappers, exclusiveWaiters, heldExclusively. Everything runs under
 * the mmap read lock, which is not modelled (nobody here takes it for writing). Processes:
 *   - RemoveA: MADV_REMOVE in A: enterZapSection(A), enterZapSection(B) (holePunchVMAs, address
 *     order), zap; finish: leave A, leave B;
 *   - RemoveB: MADV_REMOVE in B: the same entries in the same order (A is below B);
 *   - GuardAB: guard installation over A then B, one edit per VMA: lockExclusively(A),
 *     unlockExclusively(A), lockExclusively(B), unlockExclusively(B);
 *   - GuardB: guard installation over B alone;
 *   - optional (-DGUARD_A) GuardA: guard installation over A alone;
 *   - optional (-DDONTNEED) DontNeed: MADV_DONTNEED of A: enter A, leave A;
 *   - optional (-DREAP) Reap: OOM reap of A: tryLockExclusively(A), and if it got it,
 *     unlockExclusively(A).
 * Every entry yields to a waiting writer (the `nested` bypass is gone). The zaps themselves,
 * beginWrite/endWrite and the sequence count are not modelled: what a section's holder does
 * inside never waits for another VMA. Lock acquisition is one atomic step (test-and-set); every
 * other statement is its own step. The back-off waits of waitHoldingWriterLock (drop
 * writerLock, back off, retake it, re-check) are modelled as: drop writerLock, block until the
 * condition is false (read without the lock), retake writerLock, re-check. A wait whose
 * condition can never become false is then a blocked process instead of a spin, so a cycle of
 * waits is a state with no successor: every process runs to its closing brace when nothing is
 * stuck, and spin's invalid-end-state check (safety mode, no end labels) reports any state in
 * which no process can move and some has not finished. What the blocking guard drops are
 * retakes of the lock that find the condition still true and drop it again: they change
 * nothing but delay others.
 *
 * Properties:
 *   (a) no deadlock: every process finishes (invalid end state otherwise);
 *   (b) mutual exclusion per VMA (assertions): a writer that sets heldExclusively finds no zap
 *       inside and no other exclusive holder; a zap that enters finds no exclusive holder.
 *       These two are the only steps that can make "heldExclusively while zappers > 0" or "two
 *       exclusive holders" true, so checking them checks the invariant in every state.
 *
 * Mutants (each must make spin report an error):
 *   MUTANT_OUT_OF_ORDER             RemoveB enters B first, then A (both with writer priority):
 *                                   RemoveA in A, RemoveB in B, GuardAB waiting on A, GuardB
 *                                   waiting on B; each remove's second entry waits for the
 *                                   writer waiting on the other VMA, which waits for the other
 *                                   remove (a ring of waits: invalid end state).
 *   MUTANT_NO_WAIT_FOR_ZAPPERS      lockExclusively does not wait for the zaps inside: a writer
 *                                   holds a VMA exclusively while a zap is inside (assertion).
 * Not a mutant any more (no error, a pass configuration of scripts/check-models):
 *   GUARD_HOLDS_ACROSS_VMAS         GuardAB holds A exclusively until it has B (one edit over
 *                                   both, the deadlock 2271cbf fixed). With zaps in address order
 *                                   it no longer deadlocks: a zap inside B entered A before B and
 *                                   left nothing below B to wait for, so the guard holding A
 *                                   waits only for zaps that need nothing it holds. Every wait
 *                                   then targets a VMA above what the waiter holds, as long as
 *                                   writers also go upwards. One VMA at a time stays the rule.
 * And the protocol before 1a20f29, for the liveness variant below:
 *   MUTANT_NESTED_BYPASS            RemoveB (and the looping punches) enter B, then A "nested":
 *                                   the second entry does not wait for a waiting writer.
 *
 * Liveness variant STARVATION (LTL with weak fairness, i.e. pan without -DSAFETY,
 * `./pan -a -f -N <claim>`): two threads punch holes in B forever (enter A, enter B, leave
 * both: the punch zaps the mapping A below), one guard installation waits on A. Claims:
 * waiterServed (a writer announced on A eventually holds it) and zapsDrain (once a writer is
 * announced on A, A's zappers eventually reach 0). Both hold: once the guard is announced no
 * punch enters A, and the punches inside need only B, where nobody waits. With
 * MUTANT_NESTED_BYPASS (enter B, nested-enter A) both are violated: two overlapping punches keep
 * zappers[A] >= 1 forever and no scheduler lets the guard in.
 */

#define A 0
#define B 1

bit  wlock[2];                  /* writerLock */
byte zappers[2];                /* zaps inside the shared section; under writerLock */
byte waiters[2];                /* exclusiveWaiters; under writerLock */
bool held[2];                   /* heldExclusively; set and cleared by the holder */
byte holders[2];                /* ghost: exclusive holders */

inline lockW(v) { atomic { wlock[v] == 0 -> wlock[v] = 1 } }
inline unlockW(v) { wlock[v] = 0 }

/* enterZapSection(); `nested` only under MUTANT_NESTED_BYPASS (the protocol before 1a20f29) */
inline enter(v, nested) {
    lockW(v);
    if
#ifdef MUTANT_NESTED_BYPASS
    :: waiters[v] > 0 && !nested ->
#else
    :: waiters[v] > 0 ->
#endif
        do                                            /* waitHoldingWriterLock */
        :: waiters[v] > 0 -> unlockW(v); (waiters[v] == 0); lockW(v)
        :: else -> break
        od
    :: else
    fi;
    assert(!held[v] && holders[v] == 0);              /* (b) */
    zappers[v]++;
    unlockW(v)
}

/* leaveZapSection() */
inline leave(v) {
    lockW(v);
    zappers[v]--;
    unlockW(v)
}

/* lockExclusively(): returns with writerLock held */
inline lockExcl(v) {
    lockW(v);
#ifndef MUTANT_NO_WAIT_FOR_ZAPPERS
    if
    :: zappers[v] > 0 ->
        waiters[v]++;
        do                                            /* waitHoldingWriterLock */
        :: zappers[v] > 0 -> unlockW(v); (zappers[v] == 0); lockW(v)
        :: else -> break
        od;
        waiters[v]--
    :: else
    fi;
#endif
    assert(zappers[v] == 0 && holders[v] == 0);       /* (b) */
    atomic { held[v] = true; holders[v]++ }
}

/* unlockExclusively() */
inline unlockExcl(v) {
    atomic { held[v] = false; holders[v]-- };
    unlockW(v)
}

/* MADV_REMOVE: its edit touches `first`, then `second` (holePunchVMAs: address order, up
 * front); finish leaves both in touch order. */
proctype Remove(byte first, second)
{
    enter(first, false);
    enter(second, true);                              /* `nested` matters only to the bypass */
    leave(first);
    leave(second)
}

/* guard installation over A then B (the walk's VMAs in address order) */
proctype GuardAB()
{
    lockExcl(A);
#ifdef GUARD_HOLDS_ACROSS_VMAS
    lockExcl(B);                                      /* one edit over both: A stays held */
    unlockExcl(A);
    unlockExcl(B)
#else
    unlockExcl(A);                                    /* A's edit finishes ... */
    lockExcl(B);                                      /* ... before B's edit takes B */
    unlockExcl(B)
#endif
}

/* guard installation over one VMA */
proctype Guard(byte v)
{
    lockExcl(v);
    unlockExcl(v)
}

#ifdef DONTNEED
proctype DontNeed(byte v)
{
    enter(v, false);
    leave(v)
}
#endif

#ifdef REAP
/* tryLockExclusively(): never waits */
proctype Reap(byte v)
{
    atomic {
        if
        :: wlock[v] == 0 -> wlock[v] = 1
        :: else -> goto done                          /* tryLock failed */
        fi
    };
    if
    :: zappers[v] == 0 ->
        assert(holders[v] == 0);                      /* (b) */
        atomic { held[v] = true; holders[v]++ };
        unlockExcl(v)
    :: else -> unlockW(v)
    fi;
done:
    skip
}
#endif

#ifndef STARVATION
init
{
    atomic {
        run Remove(A, B);                             /* REMOVE in A */
#if defined(MUTANT_OUT_OF_ORDER) || defined(MUTANT_NESTED_BYPASS)
        run Remove(B, A);                             /* REMOVE in B, its own VMA first */
#else
        run Remove(A, B);                             /* REMOVE in B: A is below B */
#endif
        run GuardAB();
        run Guard(B);
#ifdef GUARD_A
        run Guard(A);
#endif
#ifdef DONTNEED
        run DontNeed(A);
#endif
#ifdef REAP
        run Reap(A);
#endif
    }
}
#else
/* Liveness variant (needs a non-SAFETY pan, see README.md). Two threads punch holes in B over
 * and over; the object's pages are also mapped by A, below B, so each punch enters A, then B
 * (with MUTANT_NESTED_BYPASS: B, then A nested). One guard installation over A. Claim: once
 * the guard is announced as waiting on A, it eventually holds A. */
bool gotA;

proctype Punch()
{
    do
    :: true ->
#ifdef MUTANT_NESTED_BYPASS
        enter(B, false);
        enter(A, true);
        leave(B);
        leave(A)
#else
        enter(A, false);
        enter(B, true);
        leave(A);
        leave(B)
#endif
    od
}

proctype GuardAStarved()
{
    lockExcl(A);
    gotA = true;
    unlockExcl(A)
}

ltl waiterServed { [] ((waiters[A] > 0) -> <> gotA) }
ltl zapsDrain { [] ((waiters[A] > 0) -> <> (zappers[A] == 0)) }

init
{
    atomic {
        run Punch();
        run Punch();
        run GuardAStarved()
    }
}
#endif
