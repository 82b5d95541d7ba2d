/*
 * SleepableRCU.pml -- the flip-and-drain grace period of the notifier domain.
 *
 * Abstracts (Swift sources of this repository):
 *   Sources/Shootdown/RCU/SleepableRCU.swift
 *       SleepableRCU.readLock(), readUnlock(_:), synchronize(), readersActive(index:),
 *       waitForReaders(index:)
 *   Sources/Shootdown/Notifiers/NotifierList.swift
 *       NotifierList.withSnapshot(_:) (reader: read section, then the seq_cst load of the
 *       published snapshot), NotifierList.publish(_:) (updater: seq_cst exchange of the
 *       pointer, synchronize(), then release of the old snapshot)
 *
 * What is modelled. Two readers, each with its own thread slot (lock[2] and unlock[2]
 * counters), each running SECTIONS read sections: load the phase, increment lock[phase & 1]
 * of its slot, load the published pointer, use it (the use may last any number of other
 * processes' steps, i.e. the reader may sleep), increment unlock[index] of its slot. One
 * updater publishes UPDATES new objects in turn; after each publication it runs synchronize()
 * (read the phase; wait until index (phase & 1) ^ 1 is drained; increment the phase; wait
 * until index phase & 1 (the old one) is drained) and then frees the object it replaced.
 * "Drained" is readersActive(index:) returning false: the unlock counters of every slot are
 * summed one load at a time, then the lock counters, and the sums compared. Counters are
 * small and never wrap (the Swift counters are 64-bit).
 *
 * Memory model. Spin checks sequential consistency. The Swift code makes exactly the accesses
 * of this argument sequentially consistent: the reader's phase load, its lock increment and
 * its load of the published pointer; the updater's pointer exchange, its phase load, its flip
 * and every counter load of its scans. The unlock increment is only releasing; what the
 * argument needs from it is that an updater that reads it also sees the matching lock
 * increment and the reader's uses as done, which release/acquire-or-stronger provides (the
 * scan loads are seq_cst, hence acquiring).
 *
 * Property (assertion): no reader uses an object after the updater freed it; i.e. a grace
 * period never ends while a reader that could have loaded the old pointer is still inside.
 *
 * Mutants:
 *   MUTANT_SINGLE_WAIT       synchronize() keeps only its first drain (of index
 *                            (phase & 1) ^ 1): no flip, no drain of the index readers are
 *                            using. A reader inside the current index is never waited for.
 *   MUTANT_NO_FIRST_DRAIN    flip and drain the old index, but skip the drain of the other
 *                            index first: a reader that loaded the phase before the previous
 *                            grace period's flip but incremented the counter after that grace
 *                            period's drain sits in the index that this grace period neither
 *                            drains nor flips away from (needs two grace periods).
 *   MUTANT_SUM_LOCKS_FIRST   readersActive sums the lock counters before the unlock counters:
 *                            a reader that locks and unlocks between the two sums adds to the
 *                            unlock sum only, which hides a reader still inside.
 *   Variant SINGLE_DRAIN_ACTIVE (not a mutant; spin finds no error): one drain of the index
 *                            readers are using, no flip. Safe, because that drain waits for
 *                            every reader in the domain; what the flip buys is progress (new
 *                            readers cannot keep the drained index busy), which a safety check
 *                            does not see.
 */

#ifndef SECTIONS
#define SECTIONS 2              /* read sections per reader */
#endif
#ifndef UPDATES
#define UPDATES 3               /* publications (grace periods) by the updater */
#endif

byte phase;                     /* ctr; readers use phase & 1 */
byte lockc[4];                  /* lock[index] of slot s at lockc[2 * s + index] */
byte unlockc[4];
byte ptr;                       /* the published object: 0 .. UPDATES */
bool freed[UPDATES + 1];

proctype Reader(byte r)
{
    byte k, i, p;

    do
    :: k == SECTIONS -> break
    :: else ->
        i = phase & 1;                                /* readLock: seq_cst load */
        lockc[2 * r + i]++;                           /* seq_cst increment */
        p = ptr;                                      /* withSnapshot: seq_cst load */
        assert(!freed[p]);                            /* use (the reader may sleep here) */
        assert(!freed[p]);                            /* ... and use again */
        unlockc[2 * r + i]++;                         /* readUnlock: releasing increment */
        d_step { k++; i = 0; p = 0 }
    od
}

/* readersActive(index:) == false, polled until it holds */
inline waitForReaders(x) {
    do
    :: true ->
#ifdef MUTANT_SUM_LOCKS_FIRST
        L = lockc[(x)];
        L = L + lockc[2 + (x)];
        U = unlockc[(x)];
        U = U + unlockc[2 + (x)];
#else
        U = unlockc[(x)];
        U = U + unlockc[2 + (x)];
        L = lockc[(x)];
        L = L + lockc[2 + (x)];
#endif
        if
        :: L == U -> break
        :: else
        fi
    od;
    skip;
    d_step { L = 0; U = 0 }
}

proctype Updater()
{
    byte u = 1, old, a, L, U;

    do
    :: u > UPDATES -> break
    :: else ->
        atomic { old = ptr; ptr = u };                /* publish: seq_cst exchange */
        /* synchronize() */
        a = phase & 1;
#if defined(MUTANT_SINGLE_WAIT)
        waitForReaders(a ^ 1);
#elif defined(SINGLE_DRAIN_ACTIVE)
        waitForReaders(a);
#elif defined(MUTANT_NO_FIRST_DRAIN)
        phase++;
        waitForReaders(a);
#else
        waitForReaders(a ^ 1);                        /* stragglers of the previous flip */
        phase++;                                      /* flip */
        waitForReaders(a);                            /* readers of the old index */
#endif
        freed[old] = 1;                               /* release the old snapshot */
        d_step { u++; old = 0; a = 0 }
    od
}

init
{
    atomic {
        run Reader(0);
        run Reader(1);
        run Updater()
    }
}
